package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/statemesh/statemesh/internal/dataplane/wg"
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
	defer onNewNetns(t)()
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

// TestBIRDRunsWhenALinkFails: a backbone link that cannot be set up (here:
// wireguard-go cannot start) does not keep BIRD from running on the
// others; the gateway reports BIRD running and the failed link, so it is
// not taken for a gateway without BIRD (which would lose its designations).
// Before, any one failed link left BIRD unconfigured.
func TestBIRDRunsWhenALinkFails(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "bird")
	defer onNewNetns(t)()
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	key, _ := netmap.GeneratePrivateKey()
	a := &Agent{cfg: Config{DataDir: t.TempDir(), WireGuard: "userspace", UserspaceCommand: []string{"/nonexistent/wireguard-go"}},
		key: key, log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		links: map[string]*wg.Device{}, linkMaps: map[string]netmap.Map{}, reportKick: make(chan struct{}, 1)}
	m := netmap.Map{Self: netmap.Self{Name: "eu-gw1"}, Routing: &netmap.Routing{ASN: 65010, RouterID: netip.MustParseAddr("100.64.0.1"),
		BFDIntervalMs: 100, BFDMultiplier: 3, Originate: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")},
		Links: []netmap.BackboneLink{{Interface: "smbb64", Address: netip.MustParsePrefix("169.254.64.64/31"),
			PeerAddress: netip.MustParseAddr("169.254.64.65"), Peer: "us-gw1", PeerRegion: "us-east", PeerASN: 65020,
			Endpoint: netip.MustParseAddrPort("192.0.2.2:52001"), ListenPort: 52064, MTU: 1420}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a.syncRouting(ctx, m)
	defer func() {
		if a.bird != nil {
			a.bird.Stop()
		}
	}()
	if a.linkErr == nil || !strings.Contains(a.linkErr.Error(), "smbb64") {
		t.Fatalf("link error = %v, want one naming smbb64", a.linkErr)
	}
	if a.routingErr != nil {
		t.Fatalf("BIRD not configured: %v", a.routingErr)
	}
	rs := a.routingStatus(ctx, m)
	if rs == nil || rs.BIRD != "running" || !strings.Contains(rs.Links, "smbb64") {
		t.Fatalf("routing status = %+v, want BIRD running and the failed link", rs)
	}
	if len(rs.Sessions) != 1 || rs.Sessions[0].BGPState == "Established" {
		t.Fatalf("sessions = %+v, want the failed link's session, not established", rs.Sessions)
	}
}

// onNewNetns moves the calling goroutine, locked to its thread, into a new
// network namespace; the returned func moves it back.
func onNewNetns(t *testing.T) func() {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	return func() {
		netns.Set(orig)
		ns.Close()
		orig.Close()
		runtime.UnlockOSThread()
	}
}
