package agent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/secrets"
	"github.com/statemesh/statemesh/internal/swtpm"
	"github.com/statemesh/statemesh/internal/testenv"
)

func startTPM(t *testing.T, ca *swtpm.CA, dir string) *swtpm.TPM {
	tp, err := ca.StartNew(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tp.Stop)
	return tp
}

func TestWireGuardKeySealedToTPM(t *testing.T) {
	testenv.RequireBinary(t, "swtpm")
	testenv.RequireBinary(t, "swtpm_setup")
	root := t.TempDir()
	ca, err := swtpm.NewCA(filepath.Join(root, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	tp := startTPM(t, ca, filepath.Join(root, "a"))
	data := filepath.Join(root, "agent")
	os.MkdirAll(data, 0o700)
	a := &Agent{cfg: Config{DataDir: data, TPM: tp.URL}}
	k1, err := a.loadOrCreateKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := a.loadOrCreateKey()
	if err != nil || k1 != k2 {
		t.Fatalf("reload: %v (same key: %v)", err, k1 == k2)
	}
	if _, err := os.Stat(filepath.Join(data, KeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Error("a plain key file exists next to the sealed one")
	}
	blob, _ := os.ReadFile(filepath.Join(data, SealedKeyFile))
	if bytes.Contains(blob, []byte(k1.String())) || bytes.Contains(blob, k1[:]) {
		t.Fatal("the sealed file holds the key in clear")
	}
	// Another TPM cannot open it.
	other := startTPM(t, ca, filepath.Join(root, "b"))
	b := &Agent{cfg: Config{DataDir: data, TPM: other.URL}}
	if _, err := b.loadOrCreateKey(); err == nil {
		t.Fatal("another TPM unsealed the key")
	}
}

func TestWireGuardKeyEncryptedWithKeyring(t *testing.T) {
	data := t.TempDir()
	line, _ := secrets.NewKey("k1")
	kr, _ := secrets.Parse(line)
	a := &Agent{cfg: Config{DataDir: data, Keyring: kr}}
	k1, err := a.loadOrCreateKey()
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := os.ReadFile(filepath.Join(data, KeyFile+".enc"))
	if len(blob) == 0 || bytes.Contains(blob, []byte(k1.String())) {
		t.Fatal("no encrypted key file, or the key is in clear")
	}
	if k2, err := a.loadOrCreateKey(); err != nil || k1 != k2 {
		t.Fatalf("reload: %v", err)
	}
	other, _ := secrets.NewKey("k1")
	okr, _ := secrets.Parse(other)
	if _, err := (&Agent{cfg: Config{DataDir: data, Keyring: okr}}).loadOrCreateKey(); err == nil {
		t.Fatal("another keyring opened the key")
	}
	// Without TPM or keyring: a 0600 file.
	plain := t.TempDir()
	if _, err := (&Agent{cfg: Config{DataDir: plain}}).loadOrCreateKey(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(plain, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("plain key file: %v %v", fi.Mode(), err)
	}
}

func TestRetryWaitHonoursRetryAfter(t *testing.T) {
	busy := &api.Error{Code: api.CodeUnavailable, RetryAfter: 7 * time.Second}
	for range 100 {
		if d := retryWait(time.Second, busy); d < 7*time.Second || d > 7*time.Second+7*time.Second/5 {
			t.Fatalf("Retry-After 7s: waited %s", d)
		}
		if d := retryWait(time.Second, errors.New("connection refused")); d < time.Second || d > 1200*time.Millisecond {
			t.Fatalf("no Retry-After: waited %s", d)
		}
		if d := retryWait(10*time.Second, busy); d < 10*time.Second {
			t.Fatalf("a longer own backoff was cut to Retry-After: %s", d)
		}
	}
}
