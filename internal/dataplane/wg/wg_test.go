package wg

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

// The test binary doubles as the userspace daemon.
func TestMain(m *testing.M) {
	if ifname := os.Getenv("STATEMESH_TEST_WG_DAEMON"); ifname != "" {
		if err := RunUserspace(context.Background(), os.Args[len(os.Args)-1], 1420, slog.Default()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

func suffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// host is a network namespace with one WireGuard device.
type host struct {
	ns     string
	handle netns.NsHandle
	ifname string
	key    netmap.Key
	dev    *Device
	addr   netip.Addr // underlay
	ovl    netip.Addr // overlay
}

func newPair(t *testing.T) (*host, *host) { return newPairB(t) }

func newPairB(t testing.TB) (*host, *host) {
	return newPairWith(t, netip.MustParseAddr("192.168.77.1"), netip.MustParseAddr("192.168.77.2"))
}

// newPairWith makes two namespaces joined by a veth with the underlay
// addresses ua and ub (IPv4 /24 or IPv6 /64, without duplicate address
// detection), each with a userspace WireGuard device.
func newPairWith(t testing.TB, ua, ub netip.Addr) (*host, *host) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "ip")
	s := suffix()
	a := &host{ns: "smtest-a-" + s, ifname: "smta" + s, addr: ua, ovl: netip.MustParseAddr("100.64.0.1")}
	b := &host{ns: "smtest-b-" + s, ifname: "smtb" + s, addr: ub, ovl: netip.MustParseAddr("100.64.0.2")}
	bits, nodad := "/24", []string(nil)
	if ua.Is6() {
		bits, nodad = "/64", []string{"nodad"}
	}
	for _, h := range []*host{a, b} {
		run(t, "ip", "netns", "add", h.ns)
		ns := h.ns
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		hd, err := netns.GetFromName(h.ns)
		if err != nil {
			t.Fatal(err)
		}
		h.handle = hd
		t.Cleanup(func() { hd.Close() })
		k, _ := netmap.GeneratePrivateKey()
		h.key = k
		run(t, "ip", "-n", h.ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "link", "add", "veth-a"+s, "netns", a.ns, "type", "veth", "peer", "name", "veth-b"+s, "netns", b.ns)
	run(t, append([]string{"ip", "-n", a.ns, "addr", "add", ua.String() + bits, "dev", "veth-a" + s}, nodad...)...)
	run(t, append([]string{"ip", "-n", b.ns, "addr", "add", ub.String() + bits, "dev", "veth-b" + s}, nodad...)...)
	run(t, "ip", "-n", a.ns, "link", "set", "veth-a"+s, "up")
	run(t, "ip", "-n", b.ns, "link", "set", "veth-b"+s, "up")
	for _, h := range []*host{a, b} {
		d, err := Open(Config{Interface: h.ifname, Mode: ModeUserspace, PrivateKey: h.key, NetNS: h.handle,
			UserspaceCommand: []string{os.Args[0]}, UserspaceEnv: []string{"STATEMESH_TEST_WG_DAEMON=1"}, LogDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		h.dev = d
		// h.dev, not d: tests that restart the applier replace it, and a
		// closed one deletes nothing (the daemon then outlived the test,
		// holding the namespace, and any lock the test inherited).
		t.Cleanup(func() { h.dev.Delete(); h.dev.Close() })
	}
	return a, b
}

func mapFor(self, peer *host) netmap.Map {
	return netmap.Map{
		Interface: netmap.Interface{Name: self.ifname, Addresses: []netip.Prefix{netip.PrefixFrom(self.ovl, 32)}, MTU: 1420, ListenPort: 51820},
		Peers: []netmap.Peer{{Name: "peer", PublicKey: peer.key.PublicKey(), Endpoint: netip.AddrPortFrom(peer.addr, 51820),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(peer.ovl, 32)}}},
		Routes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
	}.Normalize()
}

func ping(ns string, dst netip.Addr) error {
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", dst, ns, err, out)
	}
	return nil
}

func waitPing(t *testing.T, ns string, dst netip.Addr) {
	t.Helper()
	var err error
	for range 10 {
		if err = ping(ns, dst); err == nil {
			return
		}
	}
	t.Fatal(err)
}

func TestUserspaceMeshApplyRestartRoam(t *testing.T) {
	testenv.RequireBinary(t, "wg")
	testenv.RequireBinary(t, "ping")
	a, b := newPair(t)
	ctx := context.Background()
	ma, mb := mapFor(a, b), mapFor(b, a)
	ra, err := a.dev.Apply(ctx, ma, netmap.Map{})
	if err != nil {
		t.Fatal(err)
	}
	if !ra.Created || ra.Added != 1 || a.dev.Mode() != ModeUserspace {
		t.Fatalf("first apply: %+v mode %s", ra, a.dev.Mode())
	}
	if _, err := b.dev.Apply(ctx, mb, netmap.Map{}); err != nil {
		t.Fatal(err)
	}
	waitPing(t, a.ns, b.ovl)

	// wg show agrees with the map.
	dump := run(t, "ip", "netns", "exec", a.ns, "wg", "show", a.ifname, "dump")
	lines := strings.Split(strings.TrimSpace(dump), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], b.key.PublicKey().String()+"\t") || !strings.Contains(lines[1], "100.64.0.2/32") {
		t.Fatalf("wg show dump:\n%s", dump)
	}
	// The routes are ours and marked.
	if r := run(t, "ip", "-n", a.ns, "route", "show", "proto", "158"); !strings.Contains(r, "100.64.0.0/10 dev "+a.ifname) {
		t.Errorf("routes: %s", r)
	}

	// Applying the same map again changes nothing.
	if r, err := a.dev.Apply(ctx, ma, ma); err != nil || !r.NoChanges {
		t.Fatalf("re-apply: %+v %v", r, err)
	}

	// Restart-safe: a new applier adopts the device with zero operations
	// while a ping keeps answering.
	a.dev.Close()
	d2, err := Open(Config{Interface: a.ifname, Mode: ModeUserspace, PrivateKey: a.key, NetNS: a.handle})
	if err != nil {
		t.Fatal(err)
	}
	a.dev = d2
	if r, err := d2.Apply(ctx, ma, ma); err != nil || !r.NoChanges || r.Created {
		t.Fatalf("adopting after restart: %+v %v", r, err)
	}
	if err := ping(a.ns, b.ovl); err != nil {
		t.Fatalf("traffic interrupted by restart: %v", err)
	}

	// Roaming: an endpoint learned by the data plane survives an unchanged map.
	run(t, "ip", "netns", "exec", a.ns, "wg", "set", a.ifname, "peer", b.key.PublicKey().String(), "endpoint", "192.168.77.2:51999")
	if r, err := d2.Apply(ctx, ma, ma); err != nil || !r.NoChanges {
		t.Fatalf("apply after roam: %+v %v", r, err)
	}
	if ep := run(t, "ip", "netns", "exec", a.ns, "wg", "show", a.ifname, "endpoints"); !strings.Contains(ep, "192.168.77.2:51999") {
		t.Errorf("roamed endpoint overwritten: %s", ep)
	}

	// Removing the peer is one operation, and it is gone from wg show.
	empty := ma.Clone()
	empty.Peers = nil
	r, err := d2.Apply(ctx, empty, ma)
	if err != nil || r.PeerOps != 1 || r.Removed != 1 {
		t.Fatalf("remove: %+v %v", r, err)
	}
	if dump := run(t, "ip", "netns", "exec", a.ns, "wg", "show", a.ifname, "peers"); strings.TrimSpace(dump) != "" {
		t.Errorf("peer still there: %q", dump)
	}
	if ping(a.ns, b.ovl) == nil {
		t.Error("traffic still flows to a removed peer")
	}
}

func TestForwardingAndStatus(t *testing.T) {
	a, b := newPair(t)
	ctx := context.Background()
	ma := mapFor(a, b)
	ma.Forwarding = true
	if _, err := a.dev.Apply(ctx, ma, netmap.Map{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.dev.Apply(ctx, mapFor(b, a), netmap.Map{}); err != nil {
		t.Fatal(err)
	}
	if v := strings.TrimSpace(run(t, "ip", "netns", "exec", a.ns, "cat", "/proc/sys/net/ipv4/ip_forward")); v != "1" {
		t.Errorf("forwarding %q", v)
	}
	waitPing(t, b.ns, a.ovl)
	st, err := a.dev.Status()
	if err != nil || len(st) != 1 || time.Since(st[0].LastHandshake) > time.Minute || st[0].RxBytes == 0 {
		t.Errorf("status %+v %v", st, err)
	}
}

// TestDualStackOverIPv6Underlay: IPv6 endpoints ([addr]:port), IPv4 and
// IPv6 overlay addresses and routes on one device; both families cross
// (the lab's --pods dual --underlay ipv6 on one hop, issue 15).
func TestDualStackOverIPv6Underlay(t *testing.T) {
	testenv.RequireBinary(t, "wg")
	testenv.RequireBinary(t, "ping")
	a, b := newPairWith(t, netip.MustParseAddr("fd00:172:16:1::1"), netip.MustParseAddr("fd00:172:16:1::2"))
	ovl6 := map[*host]netip.Addr{a: netip.MustParseAddr("fd7a:115c::1"), b: netip.MustParseAddr("fd7a:115c::2")}
	dual := func(self, peer *host) netmap.Map {
		m := mapFor(self, peer)
		m.Interface.Addresses = append(m.Interface.Addresses, netip.PrefixFrom(ovl6[self], 128))
		m.Peers[0].AllowedIPs = append(m.Peers[0].AllowedIPs, netip.PrefixFrom(ovl6[peer], 128))
		m.Routes = append(m.Routes, netip.MustParsePrefix("fd7a:115c::/48"))
		return m.Normalize()
	}
	ctx := context.Background()
	ma, mb := dual(a, b), dual(b, a)
	for _, x := range []struct {
		h *host
		m netmap.Map
	}{{a, ma}, {b, mb}} {
		if _, err := x.h.dev.Apply(ctx, x.m, netmap.Map{}); err != nil {
			t.Fatal(err)
		}
	}
	waitPing(t, a.ns, b.ovl)
	waitPing(t, a.ns, ovl6[b])
	waitPing(t, b.ns, ovl6[a])
	if ep := run(t, "ip", "netns", "exec", a.ns, "wg", "show", a.ifname, "endpoints"); !strings.Contains(ep, "[fd00:172:16:1::2]:51820") {
		t.Errorf("endpoint of b on a: %s", ep)
	}
	if r := run(t, "ip", "-6", "-n", a.ns, "route", "show", "proto", "158"); !strings.Contains(r, "fd7a:115c::/48 dev "+a.ifname) {
		t.Errorf("IPv6 routes: %s", r)
	}
	if r, err := a.dev.Apply(ctx, ma, ma); err != nil || !r.NoChanges {
		t.Fatalf("re-apply of the dual-stack map: %+v %v", r, err)
	}
	// A fresh applier reads the device back as the map: the IPv6 address
	// and route are seen as they were set (no churn on every resync).
	a.dev.Close()
	d2, err := Open(Config{Interface: a.ifname, Mode: ModeUserspace, PrivateKey: a.key, NetNS: a.handle})
	if err != nil {
		t.Fatal(err)
	}
	a.dev = d2
	if r, err := d2.Apply(ctx, ma, ma); err != nil || r.Created || !r.NoChanges {
		t.Fatalf("adopting the dual-stack device: %+v %v", r, err)
	}
}
