package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

func TestEffectiveDataplane(t *testing.T) {
	for _, c := range []struct{ flag, spec, want string }{
		{"", "", DataplaneNFTables},
		{"", DataplaneAuto, DataplaneAuto},
		{DataplaneEBPF, DataplaneNFTables, DataplaneEBPF},
		{DataplaneNFTables, DataplaneEBPF, DataplaneNFTables},
	} {
		a := &Agent{cfg: Config{Guard: GuardConfig{Dataplane: c.flag}}}
		if got := a.effectiveDataplane(netmap.Map{Self: netmap.Self{Dataplane: c.spec}}); got != c.want {
			t.Errorf("flag %q, spec %q: %q, want %q", c.flag, c.spec, got, c.want)
		}
	}
}

// inNamespace runs fn on a thread switched into ns (never switched back:
// the locked thread dies with its goroutine).
func inNamespace(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err == nil {
			defer h.Close()
			err = netns.Set(h)
		}
		if err == nil {
			fn()
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// The hook follows the choice: auto attaches the guard to the underlay
// interface and says so; a map that changes peers updates the guard in
// place; the spec switching to nftables detaches it; ebpf on an interface
// that does not exist reports why the node runs nftables alone.
func TestGuardHook(t *testing.T) {
	testenv.RequireRoot(t)
	ns := fmt.Sprintf("smx-%d-hook", os.Getpid())
	for _, c := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "add", "u0", "type", "veth", "peer", "name", "u1"},
		{"ip", "-n", ns, "addr", "add", "10.98.0.1/24", "dev", "u0"},
		{"ip", "-n", ns, "link", "set", "u0", "up"},
		{"ip", "-n", ns, "link", "set", "u1", "up"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
		if c[2] == "add" && c[1] == "netns" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	a := &Agent{cfg: Config{Guard: GuardConfig{Interface: "u0"}}, log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	defer a.closeGuard()
	m := netmap.Map{Self: netmap.Self{Dataplane: DataplaneAuto}, Interface: netmap.Interface{ListenPort: 51820},
		Peers: []netmap.Peer{{Name: "p", Endpoint: netip.MustParseAddrPort("10.98.0.2:51820")}}}
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	if st := a.dataplaneStatus(); !strings.HasPrefix(st, "ebpf: XDP guard on u0") {
		t.Fatalf("status %q", st)
	}
	if out, _ := exec.Command("ip", "-n", ns, "link", "show", "u0").CombinedOutput(); !strings.Contains(string(out), "xdp") {
		t.Errorf("no XDP program on u0:\n%s", out)
	}
	c, err := a.guard.g.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Sources) != 1 || !slices.ContainsFunc(c.Local, func(a netip.Addr) bool { return a.Unmap() == netip.MustParseAddr("10.98.0.1") }) {
		t.Errorf("guard maps %+v", c)
	}
	g := a.guard.g
	m.Peers = append(m.Peers, netmap.Peer{Name: "q", Endpoint: netip.MustParseAddrPort("10.98.0.3:51820")})
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	if a.guard.g != g {
		t.Error("a new peer reloaded the guard")
	}
	if c, _ := a.guard.g.Dump(); len(c.Sources) != 2 {
		t.Errorf("after a peer was added the guard has sources %v", c.Sources)
	}
	m.Self.Dataplane = DataplaneNFTables
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	if a.guard.g != nil || !strings.HasPrefix(a.dataplaneStatus(), "nftables: chosen") {
		t.Errorf("nftables chosen, but the guard is %v, status %q", a.guard.g, a.dataplaneStatus())
	}
	if out, _ := exec.Command("ip", "-n", ns, "link", "show", "u0").CombinedOutput(); strings.Contains(string(out), "prog/xdp") {
		t.Errorf("XDP program still on u0:\n%s", out)
	}
	a.cfg.Guard = GuardConfig{Dataplane: DataplaneEBPF, Interface: "nonexistent0"}
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	if st := a.dataplaneStatus(); !strings.HasPrefix(st, "nftables: eBPF was asked for but cannot run") || !strings.Contains(st, "nonexistent0") {
		t.Errorf("status %q", st)
	}
}

// A gateway whose public endpoint is an address of another interface (its
// WAN) runs the guard there too: the floods of the internet arrive there,
// not on its region's underlay. Both interfaces' addresses are local in
// the guard's maps.
func TestGuardOnGatewayWAN(t *testing.T) {
	testenv.RequireRoot(t)
	ns := fmt.Sprintf("smx-%d-gwwan", os.Getpid())
	for _, c := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "add", "u0", "type", "veth", "peer", "name", "u1"},
		{"ip", "-n", ns, "link", "add", "w0", "type", "veth", "peer", "name", "w1"},
		{"ip", "-n", ns, "addr", "add", "10.98.0.1/24", "dev", "u0"},
		{"ip", "-n", ns, "addr", "add", "203.0.113.9/24", "dev", "w0"},
		{"ip", "-n", ns, "link", "set", "u0", "up"},
		{"ip", "-n", ns, "link", "set", "w0", "up"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
		if c[1] == "netns" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	a := &Agent{cfg: Config{Endpoint: "10.98.0.1:51820", PublicEndpoint: "203.0.113.9:51820"},
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	defer a.closeGuard()
	m := netmap.Map{Self: netmap.Self{Dataplane: DataplaneEBPF}, Interface: netmap.Interface{ListenPort: 51820}}
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	if st := a.dataplaneStatus(); !strings.HasPrefix(st, "ebpf: XDP guard on u0, w0") {
		t.Fatalf("status %q", st)
	}
	for _, ifc := range []string{"u0", "w0"} {
		if out, _ := exec.Command("ip", "-n", ns, "link", "show", ifc).CombinedOutput(); !strings.Contains(string(out), "prog/xdp") {
			t.Errorf("no XDP program on %s:\n%s", ifc, out)
		}
	}
	c, err := a.guard.g.Dump()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.98.0.1", "203.0.113.9"} {
		if !slices.ContainsFunc(c.Local, func(a netip.Addr) bool { return a.Unmap() == netip.MustParseAddr(want) }) {
			t.Errorf("%s is not local in the guard: %v", want, c.Local)
		}
	}
	// A public address behind NAT (no interface has it): the underlay only.
	a.closeGuard()
	a.guard = guardHook{}
	a.cfg.PublicEndpoint = "198.51.100.7:51820"
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	if st := a.dataplaneStatus(); !strings.HasPrefix(st, "ebpf: XDP guard on u0;") {
		t.Errorf("public address behind NAT: status %q", st)
	}
}

// A node whose address moved since its agent started (--endpoint names
// the old one: a new lease, a roaming host) still finds its underlay
// interface, through the route to the old address; the guard attached
// nowhere before (found by the lab's roaming test, issue 22).
func TestGuardAfterTheAddressMoved(t *testing.T) {
	testenv.RequireRoot(t)
	ns := fmt.Sprintf("smx-%d-moved", os.Getpid())
	for _, c := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "add", "u0", "type", "veth", "peer", "name", "u1"},
		{"ip", "-n", ns, "addr", "add", "10.98.0.120/24", "dev", "u0"},
		{"ip", "-n", ns, "link", "set", "u0", "up"},
		{"ip", "-n", ns, "link", "set", "u1", "up"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
		if c[1] == "netns" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	a := &Agent{cfg: Config{Endpoint: "10.98.0.20:51820"}, log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	defer a.closeGuard()
	m := netmap.Map{Self: netmap.Self{Dataplane: DataplaneEBPF}, Interface: netmap.Interface{ListenPort: 51820}}
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	if st := a.dataplaneStatus(); !strings.HasPrefix(st, "ebpf: XDP guard on u0") {
		t.Fatalf("status %q", st)
	}
}

// The eBPF firewall follows the same choice: with a policy and the
// WireGuard interface (an L3 TUN device here) it attaches and nftables'
// overlay chain gets the mark; nftables chosen removes both.
func TestEBPFFirewallHook(t *testing.T) {
	testenv.RequireRoot(t)
	ns := fmt.Sprintf("smx-%d-fwhook", os.Getpid())
	for _, c := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "tuntap", "add", "dev", "wg9", "mode", "tun"},
		{"ip", "-n", ns, "link", "set", "wg9", "up"},
		{"ip", "-n", ns, "link", "add", "u0", "type", "veth", "peer", "name", "u1"},
		{"ip", "-n", ns, "addr", "add", "10.98.0.1/24", "dev", "u0"},
		{"ip", "-n", ns, "link", "set", "u0", "up"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
		if c[1] == "netns" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	a := &Agent{cfg: Config{Guard: GuardConfig{Interface: "u0"}}, log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	defer a.closeGuard()
	m := netmap.Map{Self: netmap.Self{Dataplane: DataplaneAuto, PodPrefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.64/26")}},
		Interface: netmap.Interface{Name: "wg9", ListenPort: 51820},
		Firewall:  &netmap.Firewall{Rules: []netmap.FirewallRule{{Set: "seg_a"}}, Sets: map[string][]netip.Prefix{"seg_a": {netip.MustParsePrefix("100.64.1.0/24")}}}}
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	st := a.dataplaneStatus()
	if !strings.HasPrefix(st, "ebpf: XDP guard on u0; overlay policy in eBPF on wg9") || a.ebpfMark() == 0 {
		t.Fatalf("status %q, mark %#x", st, a.ebpfMark())
	}
	if s := a.firewallState(m); s.EBPFMark == 0 {
		t.Error("nftables' state has no mark while the eBPF firewall runs")
	}
	// Too many sets for the program: nftables alone, and it says why.
	big := m.Clone()
	for i := range 70 {
		big.Firewall.Rules = append(big.Firewall.Rules, netmap.FirewallRule{Set: fmt.Sprint("s", i)})
	}
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), big) })
	if st := a.dataplaneStatus(); !strings.Contains(st, "overlay policy in nftables (the policy does not fit the eBPF firewall") || a.ebpfMark() != 0 {
		t.Errorf("too large a policy: status %q, mark %#x", st, a.ebpfMark())
	}
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	if a.ebpfMark() == 0 {
		t.Error("the firewall did not come back with a policy that fits")
	}
	m.Self.Dataplane = DataplaneNFTables
	inNamespace(t, ns, func() { a.syncGuard(context.Background(), m) })
	if a.guard.fw.f != nil || a.ebpfMark() != 0 || !strings.HasPrefix(a.dataplaneStatus(), "nftables: chosen") {
		t.Errorf("nftables chosen: firewall %v, mark %#x, status %q", a.guard.fw.f, a.ebpfMark(), a.dataplaneStatus())
	}
}
