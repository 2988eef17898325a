package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
