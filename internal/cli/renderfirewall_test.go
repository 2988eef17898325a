package cli

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
)

// TestRenderFirewallFromSavedMap: render firewall --map prints the nft
// script of a saved map (the agent's map.json), with the agent's
// --underlay-allow; a map that is not one, or neither --node nor --map,
// is refused. (The real controller, nft -c and a comparison with the
// agent's loaded table: test/e2e TestLabDownThenUpAtOnce.)
func TestRenderFirewallFromSavedMap(t *testing.T) {
	p := netip.MustParsePrefix
	m := netmap.Map{Revision: 7,
		Self:      netmap.Self{Name: "eu-prod-n1", Region: "eu", Cluster: "prod", Role: netmap.RoleNode, Class: "strong", PodPrefixes: []netip.Prefix{p("10.0.0.0/25")}},
		Interface: netmap.Interface{Name: "sm0", ListenPort: 51820, MTU: 1440, Addresses: []netip.Prefix{p("100.64.0.2/32")}},
		Peers: []netmap.Peer{{Name: "eu-prod-n2", PublicKey: netmap.Key{1}, Endpoint: netip.MustParseAddrPort("192.0.2.12:51820"),
			AllowedIPs: []netip.Prefix{p("100.64.0.3/32"), p("10.0.0.128/25")}}},
		Firewall: &netmap.Firewall{Rules: []netmap.FirewallRule{{Comment: "segment web: members", Set: "seg_web"}},
			Sets: map[string][]netip.Prefix{"seg_web": {p("100.64.0.3/32"), p("10.0.0.128/25")}}},
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "map.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, "", "render", "firewall", "--map", path, "--underlay-allow", "tcp/22")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"eu-prod-n1 (map revision 7)", "add table inet statemesh", "flush table inet statemesh",
		"192.0.2.12", "seg_web_v4", "10.0.0.128/25", "tcp dport 22", `comment "segment web: members"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	// Standard input works too.
	if r2 := run(t, string(b), "render", "firewall", "--map", "-", "--underlay-allow", "tcp/22"); r2.code != 0 || r2.stdout != r.stdout {
		t.Errorf("--map -: exit %d, same output %v: %s", r2.code, r2.stdout == r.stdout, r2.stderr)
	}
	if r := run(t, `{"self":{}}`, "render", "firewall", "--map", "-"); r.code != ExitError || !strings.Contains(r.stderr, "not a network map") {
		t.Errorf("bad map: exit %d: %s", r.code, r.stderr)
	}
	if r := run(t, "", "render", "firewall"); r.code != ExitUsage {
		t.Errorf("no --node or --map: exit %d: %s", r.code, r.stderr)
	}
}
