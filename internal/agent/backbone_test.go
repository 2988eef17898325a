package agent

import (
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

// TestIssue15DetourRulesBothFamilies: a BIRD-mode gateway of a dual-stack
// mesh sends traffic from other regions' links to the detour table for
// IPv4 and IPv6; an IPv4-only routing keeps no IPv6 rules, and a routing
// without links keeps none at all.
func TestIssue15DetourRulesBothFamilies(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "ip")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	defer netns.Set(orig)
	rules := func(family string) string {
		// ip runs on this thread's namespace (exec forks from it).
		out, err := exec.Command("ip", family, "rule", "show", "table", "5200").CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s rule: %v\n%s", family, err, out)
		}
		return string(out)
	}
	rt := &netmap.Routing{ASN: 65001, Links: []netmap.BackboneLink{
		{Interface: "smbb1", PeerASN: 65001}, // iBGP: no rule
		{Interface: "smbb64", PeerASN: 65002},
	}, Originate: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32"), netip.MustParsePrefix("fd7a::1/128")}}
	if err := syncDetourRules(rt); err != nil {
		t.Fatal(err)
	}
	for _, family := range []string{"-4", "-6"} { // ([detached]: no such interface in this namespace)
		if got := rules(family); !strings.Contains(got, "1000:\tfrom all iif smbb64 ") || strings.Contains(got, "smbb1 ") {
			t.Errorf("ip %s rules: %q", family, got)
		}
	}
	rt.Originate = rt.Originate[:1] // IPv4 only
	if err := syncDetourRules(rt); err != nil {
		t.Fatal(err)
	}
	if got := rules("-6"); strings.Contains(got, "smbb64") {
		t.Errorf("IPv4-only routing kept IPv6 rules: %q", got)
	}
	if err := syncDetourRules(nil); err != nil {
		t.Fatal(err)
	}
	if got := rules("-4") + rules("-6"); strings.Contains(got, "5200") {
		t.Errorf("rules left without routing: %q", got)
	}
}
