package firewall

import (
	"context"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"sigs.k8s.io/knftables"

	"github.com/statemesh/statemesh/internal/golden"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

func state() State {
	p := netip.MustParsePrefix
	return State{
		Interface: "sm0", ListenPort: 51820,
		Peers: []netip.Addr{netip.MustParseAddr("172.16.1.2"), netip.MustParseAddr("172.16.1.3")},
		Pods:  []netip.Prefix{p("10.0.0.0/28")},
		Policy: &netmap.Firewall{
			Rules: []netmap.FirewallRule{
				{Comment: "segment web: members", Set: "seg_web"},
				{Comment: "rule web-db: web -> db", Set: "seg_web", Ports: []netmap.PortRange{{Proto: "tcp", From: 5432, To: 5432}, {Proto: "icmp"}}},
			},
			Sets: map[string][]netip.Prefix{"seg_web": {p("10.0.0.16/28"), p("100.64.32.2/32"), p("fd7a::2/128")}},
		},
		UnderlayAllow: []netmap.PortRange{{Proto: "tcp", From: 22, To: 22}},
	}
}

// TestAnyPortAllowsEverything: a rule whose ports hold "any" (the lab's
// ops-to-frontend) accepts every protocol from its set in both families;
// it rendered no rule at all, and clients were dropped (issue 15's lab).
func TestAnyPortAllowsEverything(t *testing.T) {
	s := state()
	s.Policy.Rules = append(s.Policy.Rules, netmap.FirewallRule{Comment: "rule ops-to-frontend: ops -> frontend", Set: "seg_ops", Ports: []netmap.PortRange{{Proto: "any"}}})
	s.Policy.Sets["seg_ops"] = []netip.Prefix{netip.MustParsePrefix("100.64.16.0/24"), netip.MustParsePrefix("fd7a:115c:0:40::/62")}
	fake := knftables.NewFake(knftables.InetFamily, Table)
	if err := NewWith(fake, nil).Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	for _, want := range []string{`ip saddr @seg_ops_v4 accept comment "rule ops-to-frontend: ops -> frontend"`, `ip6 saddr @seg_ops_v6 accept comment "rule ops-to-frontend: ops -> frontend"`} {
		if !strings.Contains(dump, want) {
			t.Errorf("no %s in:\n%s", want, dump)
		}
	}
}

func TestRenderGolden(t *testing.T) {
	fake := knftables.NewFake(knftables.InetFamily, Table)
	f := NewWith(fake, nil)
	if err := f.Apply(context.Background(), state()); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "policy.nft", []byte(fake.Dump()))
	s := state()
	s.Policy = nil
	fake = knftables.NewFake(knftables.InetFamily, Table)
	if err := NewWith(fake, nil).Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "nopolicy.nft", []byte(fake.Dump()))
	s.Gateway = true
	fake = knftables.NewFake(knftables.InetFamily, Table)
	if err := NewWith(fake, nil).Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "gateway.nft", []byte(fake.Dump()))
	fake = knftables.NewFake(knftables.InetFamily, Table)
	if err := NewWith(fake, nil).Apply(context.Background(), bgpGateway()); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "gateway-bgp.nft", []byte(fake.Dump()))
}

// bgpGateway is a BIRD-mode gateway with two backbone links and three of
// the operator's routers (one reached over IPv6).
func bgpGateway() State {
	s := state()
	s.Policy, s.Gateway = nil, true
	s.BackbonePorts, s.BackbonePrefix = []int{52001, 52033}, "smbb"
	s.BGPPeers = []netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8:1::7")}
	return s
}

func TestSetElements(t *testing.T) {
	fake := knftables.NewFake(knftables.InetFamily, Table)
	f := NewWith(fake, nil)
	ctx := context.Background()
	if err := f.Apply(ctx, state()); err != nil {
		t.Fatal(err)
	}
	add := map[string][]netip.Prefix{"seg_web": {netip.MustParsePrefix("100.64.32.9/32")}, "seg_other": {netip.MustParsePrefix("1.2.3.4/32")}}
	del := map[string][]netip.Prefix{"seg_web": {netip.MustParsePrefix("100.64.32.2/32")}}
	if err := f.ApplySets(ctx, add, del); err != nil {
		t.Fatal(err)
	}
	els, _ := fake.ListElements(ctx, "set", "seg_web_v4")
	var got []string
	for _, e := range els {
		got = append(got, e.Key[0])
	}
	if strings.Join(got, ",") != "10.0.0.16/28,100.64.32.9/32" && strings.Join(got, ",") != "100.64.32.9/32,10.0.0.16/28" {
		t.Errorf("elements %v", got)
	}
	if _, err := fake.ListElements(ctx, "set", "seg_other_v4"); err == nil {
		t.Error("a set the node does not use was created")
	}
}

// inNewNetns runs fn on a thread in a fresh network namespace.
func inNewNetns(t *testing.T, fn func()) {
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
	fn()
}

func nft(t *testing.T, args ...string) string {
	out, err := exec.Command("nft", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestRealNftables applies the ruleset with the real nft in a fresh
// network namespace, checks it is readable and commented, leaves a foreign
// table alone, and detects a flush as drift.
func TestRealNftables(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	inNewNetns(t, func() {
		nft(t, "add", "table", "inet", "someone-else")
		nft(t, "add", "chain", "inet", "someone-else", "c")
		nft(t, "add", "rule", "inet", "someone-else", "c", "counter")
		f, err := New(nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		// Before the first map: a table that only tracks connections.
		if err := f.Track(ctx); err != nil {
			t.Fatal(err)
		}
		if out := nft(t, "list", "table", "inet", Table); !strings.Contains(out, "ct state established,related accept") || strings.Contains(out, "drop") {
			t.Fatalf("tracking table should track and accept everything:\n%s", out)
		}
		if err := f.Apply(ctx, state()); err != nil {
			t.Fatal(err)
		}
		// An enforced table is kept as it is.
		if err := f.Track(ctx); err != nil {
			t.Fatal(err)
		}
		out := nft(t, "list", "table", "inet", Table)
		for _, want := range []string{`comment "rule web-db: web -> db"`, `comment "default deny between segments"`, "seg_web_v4", "100.64.32.2", "tcp dport 5432",
			`comment "underlay: WireGuard from known peers"`, "172.16.1.2"} {
			if !strings.Contains(out, want) {
				t.Errorf("ruleset lacks %q:\n%s", want, out)
			}
		}
		if err := f.Check(ctx); err != nil {
			t.Fatalf("fresh table reported as drift: %v", err)
		}
		nft(t, "flush", "table", "inet", Table)
		if err := f.Check(ctx); err == nil {
			t.Fatal("a flushed table was not detected")
		}
		if err := f.Apply(ctx, state()); err != nil {
			t.Fatal(err)
		}
		if err := f.Check(ctx); err != nil {
			t.Fatal(err)
		}
		if foreign := nft(t, "list", "table", "inet", "someone-else"); !strings.Contains(foreign, "counter") {
			t.Errorf("the foreign table was changed:\n%s", foreign)
		}
		// Element updates on the real thing.
		if err := f.ApplySets(ctx, map[string][]netip.Prefix{"seg_web": {netip.MustParsePrefix("100.64.32.77/32")}}, nil); err != nil {
			t.Fatal(err)
		}
		if out := nft(t, "list", "set", "inet", Table, "seg_web_v4"); !strings.Contains(out, "100.64.32.77") {
			t.Errorf("element not added:\n%s", out)
		}
		// A BIRD-mode gateway: the operator's routers may open BGP and BFD.
		if err := f.Apply(ctx, bgpGateway()); err != nil {
			t.Fatal(err)
		}
		if out := nft(t, "list", "table", "inet", Table); !strings.Contains(out, "ip saddr { 192.0.2.1, 192.0.2.9 } tcp dport 179 accept") ||
			!strings.Contains(out, "udp dport { 3784, 4784 } accept") || !strings.Contains(out, "udp dport { 52001, 52033 } accept") ||
			!strings.Contains(out, "ip6 saddr 2001:db8:1::7 tcp dport 179 accept") {
			t.Errorf("BIRD-mode gateway ruleset:\n%s", out)
		}
		if err := f.Check(ctx); err != nil {
			t.Fatalf("BIRD-mode table reported as drift: %v", err)
		}
		// A new policy without the set removes it.
		np := state()
		np.Policy = nil
		if err := f.Apply(ctx, np); err != nil {
			t.Fatal(err)
		}
		if out := nft(t, "list", "table", "inet", Table); strings.Contains(out, "seg_web") || !strings.Contains(out, "the overlay allows all") {
			t.Errorf("after removing the policy:\n%s", out)
		}
		if err := f.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// BenchmarkApply5000 applies the ruleset of a node whose cluster has 5,000
// peers (5,000 peer endpoints, a 5,000-member segment set), with the real
// nft in a fresh network namespace.
func BenchmarkApply5000(b *testing.B) {
	testenv.RequireRoot(b)
	s := state()
	s.Peers = nil
	s.Policy.Sets["seg_web"] = nil
	for i := range 5000 {
		s.Peers = append(s.Peers, netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}))
		s.Policy.Sets["seg_web"] = append(s.Policy.Sets["seg_web"], netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 32))
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		b.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed("statemesh-bench-nft")
	if err != nil {
		b.Fatal(err)
	}
	defer netns.DeleteNamed("statemesh-bench-nft")
	defer ns.Close()
	// NewNamed entered it; each sub-benchmark enters it on its own thread.
	if err := netns.Set(orig); err != nil {
		b.Fatal(err)
	}
	runtime.UnlockOSThread()
	// inNS runs a sub-benchmark with its goroutine's thread in the
	// benchmark's namespace: nft inherits the thread's namespace, and
	// sub-benchmarks run on goroutines of their own.
	inNS := func(b *testing.B, fn func(b *testing.B)) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := netns.Set(ns); err != nil {
			b.Fatal(err)
		}
		defer netns.Set(orig)
		fn(b)
	}
	f, err := New(nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	// Baseline in the same run: one member joining and leaving a set, what a
	// node enrolling elsewhere costs this node.
	b.Run("full-table", func(b *testing.B) {
		inNS(b, func(b *testing.B) {
			for b.Loop() {
				if err := f.Apply(ctx, s); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("one-set-element", func(b *testing.B) {
		inNS(b, func(b *testing.B) {
			if err := f.Apply(ctx, s); err != nil {
				b.Fatal(err)
			}
			p := map[string][]netip.Prefix{"seg_web": {netip.MustParsePrefix("100.99.0.1/32")}}
			for b.Loop() {
				if err := f.ApplySets(ctx, p, nil); err != nil {
					b.Fatal(err)
				}
				if err := f.ApplySets(ctx, nil, p); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// TestScriptIsWhatApplyLoads: the nft script statemesh render firewall
// prints passes nft -c, and loaded with nft -f into a fresh namespace
// lists exactly what Apply loads, for a node with a policy, without one,
// and a BIRD-mode gateway.
func TestScriptIsWhatApplyLoads(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	noPolicy := state()
	noPolicy.Policy = nil
	for name, s := range map[string]State{"policy": state(), "nopolicy": noPolicy, "gateway-bgp": bgpGateway()} {
		t.Run(name, func(t *testing.T) {
			script := Script(s)
			cmd := exec.Command("nft", "-c", "-f", "-")
			cmd.Stdin = strings.NewReader(script)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("nft -c: %v\n%s\n%s", err, out, script)
			}
			var applied, loaded string
			inNewNetns(t, func() {
				f, err := New(nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := f.Apply(context.Background(), s); err != nil {
					t.Fatal(err)
				}
				applied = nft(t, "list", "table", "inet", Table)
			})
			inNewNetns(t, func() {
				cmd := exec.Command("nft", "-f", "-")
				cmd.Stdin = strings.NewReader(script)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("nft -f: %v\n%s", err, out)
				}
				loaded = nft(t, "list", "table", "inet", Table)
			})
			if applied != loaded {
				t.Errorf("Apply loads:\n%s\nthe script loads:\n%s", applied, loaded)
			}
		})
	}
}

// A rule whose ports are "any" accepts everything from its set, in both
// families (the lab's ops-to-frontend rule was dropped when "icmp" got its
// own ICMP types: a proto without a match was skipped instead of matching
// all).
func TestAnyProtoAcceptsTheSet(t *testing.T) {
	s := state()
	s.Policy.Rules = []netmap.FirewallRule{{Set: "seg_web", Comment: "rule any", Ports: []netmap.PortRange{{Proto: "any"}}}}
	s.UnderlayAllow = []netmap.PortRange{{Proto: "any"}}
	script := Script(s)
	for _, want := range []string{"ip saddr @seg_web_v4 accept", "ip6 saddr @seg_web_v6 accept"} {
		if !strings.Contains(script, want) {
			t.Errorf("the ruleset lacks %q:\n%s", want, script)
		}
	}
	if strings.Contains(script, "underlay: nothing else") && !strings.Contains(script, `accept comment "underlay: allowed by the operator"`) {
		t.Errorf("--underlay-allow any opens nothing:\n%s", script)
	}
}

// Issue 22: with the eBPF firewall on the WireGuard interface, the overlay
// chain first accepts what it marked (clearing the bit), and keeps every
// rule for what it left unmarked; without a policy nothing changes.
func TestEBPFMarkRule(t *testing.T) {
	s := state()
	s.EBPFMark = 0x00100000
	fake := knftables.NewFake(knftables.InetFamily, Table)
	if err := NewWith(fake, nil).Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	var overlay []string
	for _, l := range strings.Split(fake.Dump(), "\n") {
		if strings.HasPrefix(l, "add rule inet statemesh overlay ") {
			overlay = append(overlay, l)
		}
	}
	want := `add rule inet statemesh overlay meta mark & 0x00100000 == 0x00100000 meta mark set meta mark & 0xffefffff accept`
	if len(overlay) < 2 || !strings.HasPrefix(overlay[0], want) || !strings.Contains(overlay[len(overlay)-1], "counter drop") {
		t.Errorf("overlay chain:\n%s", strings.Join(overlay, "\n"))
	}
	plain := knftables.NewFake(knftables.InetFamily, Table)
	NewWith(plain, nil).Apply(context.Background(), state())
	if n, m := strings.Count(fake.Dump(), "\n"), strings.Count(plain.Dump(), "\n"); n != m+1 {
		t.Errorf("the mark adds %d lines, want 1", n-m)
	}
}
