package secrets

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func ring(t *testing.T, ids ...string) *Keyring {
	var lines []string
	for _, id := range ids {
		l, err := NewKey(id)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	k, err := Parse(strings.Join(lines, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpen(t *testing.T) {
	k := ring(t, "a", "b")
	secret := []byte("the CA's private key")
	sealed, err := k.Seal("pki/ca", secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, secret) {
		t.Fatal("plaintext visible in the envelope")
	}
	again, _ := k.Seal("pki/ca", secret)
	if bytes.Equal(sealed, again) {
		t.Fatal("two seals of one secret are equal: the nonce is not fresh")
	}
	pt, err := k.Open("pki/ca", sealed)
	if err != nil || !bytes.Equal(pt, secret) {
		t.Fatalf("open: %q %v", pt, err)
	}
	if id, _ := KeyID(sealed); id != "a" {
		t.Errorf("sealed with %q, want the primary", id)
	}
}

func TestRefusals(t *testing.T) {
	k := ring(t, "a")
	sealed, _ := k.Seal("pki/ca", []byte("secret"))
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	for name, tc := range map[string]struct {
		ring *Keyring
		aad  string
		data []byte
		want error
	}{
		"moved to another record": {k, "tokens/x", sealed, ErrOpen},
		"tampered":                {k, "pki/ca", tampered, ErrOpen},
		"unknown key":             {ring(t, "z"), "pki/ca", sealed, ErrUnknownKey},
		"same ID, other key":      {ring(t, "a"), "pki/ca", sealed, ErrOpen},
		"not sealed":              {k, "pki/ca", []byte("plain text"), ErrNotSealed},
		"truncated":               {k, "pki/ca", sealed[:12], ErrNotSealed},
		"empty":                   {k, "pki/ca", nil, ErrNotSealed},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := tc.ring.Open(tc.aad, tc.data); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kek")
	old, err := CreateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := old.Seal("pki/ca", []byte("secret"))
	k, err := AddPrimary(path, "k2")
	if err != nil {
		t.Fatal(err)
	}
	if k.Primary() != "k2" {
		t.Fatalf("primary %q", k.Primary())
	}
	if pt, err := k.Open("pki/ca", sealed); err != nil || string(pt) != "secret" {
		t.Fatalf("old envelope after rotation: %v", err)
	}
	resealed, changed, err := k.Reseal("pki/ca", sealed)
	if err != nil || !changed {
		t.Fatalf("reseal: %v %v", changed, err)
	}
	if id, _ := KeyID(resealed); id != "k2" {
		t.Errorf("resealed with %q", id)
	}
	if _, changed, _ := k.Reseal("pki/ca", resealed); changed {
		t.Error("resealing an up-to-date envelope changed it")
	}
}

func TestKeyringFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kek")
	if _, err := CreateFile(path); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateFile(path); err == nil {
		t.Error("CreateFile overwrote an existing keyring")
	}
	os.Chmod(path, 0o644)
	if _, err := Load(path); !errors.Is(err, ErrKeyring) {
		t.Errorf("world-readable keyring: %v", err)
	}
	for name, text := range map[string]string{
		"empty": "", "no colon": "abc", "bad id": "a b:AAAA", "short key": "a:AAAA", "duplicate": strings.Repeat("a:"+strings.Repeat("A", 43)+"=\n", 2),
	} {
		if _, err := Parse(text); !errors.Is(err, ErrKeyring) {
			t.Errorf("%s: %v", name, err)
		}
	}
	t.Setenv("STATEMESH_TEST_KEK", mustLine(t))
	if _, ok, err := FromEnvOrFile("STATEMESH_TEST_KEK", ""); !ok || err != nil {
		t.Errorf("from env: %v %v", ok, err)
	}
}

func mustLine(t *testing.T) string {
	l, err := NewKey("env")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func FuzzOpen(f *testing.F) {
	k, _ := Parse("a:" + strings.Repeat("A", 43) + "=")
	s, _ := k.Seal("r", []byte("x"))
	f.Add(s)
	f.Add([]byte("smenc1\x01a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Anything opens to the sealed plaintext or fails; nothing panics.
		if pt, err := k.Open("r", b); err == nil && !bytes.Equal(pt, []byte("x")) {
			t.Fatalf("forged envelope opened to %q", pt)
		}
	})
}
