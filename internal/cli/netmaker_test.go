package cli

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
)

// TestNetmakerFlags: the controller's Netmaker flags are checked before
// it starts, and no error carries the token.
func TestNetmakerFlags(t *testing.T) {
	const secret = "nm-master-key-do-not-print"
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte(secret+"\n"), 0o600)
	t.Setenv("STATEMESH_NETMAKER_TOKEN", "")
	base := controllerFlags{netmakerURL: "https://nm.example", netmakerTokenFile: file,
		netmakerNetworks: []string{"eu-central=nm-eu:10.201.0.0/16"}, netmakerEvery: 10 * time.Second}

	cfg, err := netmakerConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	if n := cfg.Networks["eu-central"]; n.Name != "nm-eu" || n.AddressRange != "10.201.0.0/16" || cfg.KeyTTL != 0 {
		t.Errorf("config: %+v", cfg)
	}
	ttl := base
	ttl.netmakerKeyTTL = 720 * time.Hour
	if cfg, err := netmakerConfig(ttl); err != nil || cfg.KeyTTL != 720*time.Hour {
		t.Errorf("--netmaker-key-ttl 720h: %v", err)
	}

	for name, c := range map[string]struct {
		mod  func(*controllerFlags)
		want string
	}{
		"no token":        {func(f *controllerFlags) { f.netmakerTokenFile = "" }, "needs a token"},
		"empty token":     {func(f *controllerFlags) { f.netmakerTokenFile = filepath.Join(t.TempDir(), "none") }, "needs a token"},
		"network syntax":  {func(f *controllerFlags) { f.netmakerNetworks = []string{"eu-central=nm-eu"} }, "REGION=NETWORK:CIDR"},
		"no network":      {func(f *controllerFlags) { f.netmakerNetworks = nil }, "at least one --netmaker-network"},
		"short key TTL":   {func(f *controllerFlags) { f.netmakerKeyTTL = time.Minute }, "--netmaker-key-ttl"},
		"URL":             {func(f *controllerFlags) { f.netmakerURL = "nm.example" }, "want https://HOST"},
		"network without": {func(f *controllerFlags) { f.netmakerURL = "" }, "needs --netmaker-url"},
	} {
		f := base
		c.mod(&f)
		_, err := netmakerConfig(f)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error shows the token: %v", name, err)
		}
	}
}

// TestNetmakerDetachCommand: Reconciler.Detach from the command line
// (issue 17, item 6: it had no CLI).
func TestNetmakerDetachCommand(t *testing.T) {
	nm := nmtest.Start(t)
	c, err := netmaker.NewClient(nm.URL, nm.Token, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d := netmaker.Desired{Networks: []netmaker.NetworkSpec{{Name: "nm-eu", AddressRange: "10.201.0.0/16"}},
		Keys: []netmaker.KeySpec{{Region: "eu", Cluster: "prod", Network: "nm-eu"}}}
	if _, err := (&netmaker.Reconciler{C: c}).Reconcile(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	nm.Do(func(m *nmtest.Model) { m.AddNetwork("theirs", "10.9.0.0/16", false) })
	t.Setenv("STATEMESH_NETMAKER_TOKEN", nm.Token)
	if r := run(t, "", "netmaker", "detach", "--netmaker-url", nm.URL); r.code == 0 || !strings.Contains(r.stderr, "--yes") {
		t.Errorf("without --yes: %+v", r)
	}
	r := run(t, "", "netmaker", "detach", "--netmaker-url", nm.URL, "--yes")
	if r.code != 0 || !strings.Contains(r.stdout, "delete network nm-eu") {
		t.Fatalf("detach: %+v", r)
	}
	nm.Do(func(m *nmtest.Model) {
		if m.Networks["nm-eu"] != nil || m.Networks["theirs"] == nil {
			t.Errorf("after detach: nm-eu %v, theirs %v", m.Networks["nm-eu"] != nil, m.Networks["theirs"] != nil)
		}
	})
}

// TestControllerThatCannotListenLeavesNoAdmin: a start that fails to bind
// must not leave a store with an admin credential but no admin.json; the
// next start writes admin.json (issue 17, item 6).
func TestControllerThatCannotListenLeavesNoAdmin(t *testing.T) {
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	var out, errb bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb}
	cmd := newControllerCmd(e)
	cmd.SetArgs([]string{"--data-dir", dir, "--listen", busy.Addr().String(), "--log-level", "error"})
	if err := cmd.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "listening on") {
		t.Fatalf("a busy port: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cmd = newControllerCmd(e)
	cmd.SetArgs([]string{"--data-dir", dir, "--listen", "127.0.0.1:0", "--log-level", "error"})
	go func() { done <- cmd.ExecuteContext(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, AdminConfigFile)); err == nil {
			break
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("the second start ended without admin.json: %v\n%s", err, errb.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no admin.json after the second start:\n%s", errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
}

// TestStatusShowsUnattestedNetmakerHosts: statemesh status names the
// Netmaker hosts no attested node owns (issue 17, item 6).
func TestStatusShowsUnattestedNetmakerHosts(t *testing.T) {
	var b bytes.Buffer
	st := api.Status{Backends: []api.BackendStatus{{Name: "netmaker", Healthy: true, Ungated: true, RemovedUnattested: 3, Unattested: []string{"laptop in nm-eu"}}}}
	if err := printStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"unattested hosts removed 3", "UNATTESTED (left in place) laptop in nm-eu"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
}
