package xdpguard

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/dataplane/guardplan"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

// vethPair makes two namespaces, smx-<pid>-<tag>-{a,b}, joined by a veth
// pair a0—b0: a has 10.99.0.2 (a peer), 10.99.0.3 (a stranger) and
// fd99::2, fd99::3; b has 10.99.0.1 and fd99::1.
func vethPair(t testing.TB, tag string) (a, b string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "ip")
	a, b = fmt.Sprintf("smx-%d-%s-a", os.Getpid(), tag), fmt.Sprintf("smx-%d-%s-b", os.Getpid(), tag)
	for _, ns := range []string{a, b} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	sh(t, "ip", "-n", a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", b)
	for _, c := range [][]string{
		{"ip", "-n", a, "addr", "add", "10.99.0.2/24", "dev", "a0"},
		{"ip", "-n", a, "addr", "add", "10.99.0.3/24", "dev", "a0"},
		{"ip", "-n", a, "addr", "add", "fd99::2/64", "dev", "a0", "nodad"},
		{"ip", "-n", a, "addr", "add", "fd99::3/64", "dev", "a0", "nodad"},
		{"ip", "-n", b, "addr", "add", "10.99.0.1/24", "dev", "b0"},
		{"ip", "-n", b, "addr", "add", "fd99::1/64", "dev", "b0", "nodad"},
		{"ip", "-n", a, "link", "set", "a0", "up"},
		{"ip", "-n", b, "link", "set", "b0", "up"},
	} {
		sh(t, c...)
	}
	return a, b
}

// TestGuardOnVeth attaches the guard to a real interface and sends it real
// packets from another namespace: neighbour resolution (ARP, ND) and ping
// still work, WireGuard from the peer arrives, transport data from a
// stranger does not, a stranger's handshake initiations arrive up to the
// limit, a SYN to a port the node does not serve is dropped until the port
// is opened in place; the counters say so.
func TestGuardOnVeth(t *testing.T) {
	a, b := vethPair(t, "g")
	in := guardplan.Input{
		WireGuardPorts:      []int{51820},
		Peers:               []netip.Addr{netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("fd99::2")},
		Local:               []netip.Addr{netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("fd99::1")},
		HandshakesPerSource: 3, HandshakesTotal: 100, WindowNanos: 60e9,
		EphemeralFrom: 32768, EphemeralTo: 60999,
	}
	g := loadGuard(t, in)
	inNS(t, b, func() error { return g.Attach("b0", "") })
	if g.Interface() != "b0" {
		t.Fatalf("attached to %q", g.Interface())
	}
	if out := sh(t, "ip", "-n", b, "link", "show", "b0"); !strings.Contains(out, "xdp") {
		t.Errorf("ip link shows no XDP program on b0:\n%s", out)
	} else if !strings.Contains(out, " xdpgeneric ") {
		// The default mode on a veth is generic: a native program would
		// cost the veth its GRO.
		t.Errorf("the default mode attached natively to a veth:\n%s", out)
	}

	// Receivers in b: WireGuard's port and a TCP service.
	var wgConn *net.UDPConn
	var svc net.Listener
	inNS(t, b, func() error {
		var err error
		if wgConn, err = net.ListenUDP("udp", &net.UDPAddr{Port: 51820}); err != nil {
			return err
		}
		svc, err = net.Listen("tcp", ":8080")
		return err
	})
	defer wgConn.Close()
	defer svc.Close()
	go func() {
		for {
			c, err := svc.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	// Neighbour resolution and ping, both families.
	sh(t, "ip", "netns", "exec", a, "ping", "-c", "1", "-W", "2", "10.99.0.1")
	sh(t, "ip", "netns", "exec", a, "ping", "-6", "-c", "1", "-W", "2", "fd99::1")

	send := func(from string, payload []byte, n int) {
		inNS(t, a, func() error {
			c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)}, &net.UDPAddr{IP: net.ParseIP(strings.Split(to(from), "%")[0]), Port: 51820})
			if err != nil {
				return err
			}
			defer c.Close()
			for range n {
				if _, err := c.Write(payload); err != nil {
					return err
				}
			}
			return nil
		})
	}
	received := func() map[string]int {
		got := map[string]int{}
		buf := make([]byte, 2048)
		for {
			wgConn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			_, from, err := wgConn.ReadFromUDP(buf)
			if err != nil {
				return got
			}
			got[from.IP.String()]++
		}
	}
	send("10.99.0.2", transportData(), 5)
	send("fd99::2", transportData(), 5)
	// Unknown sources (limit 3 each): data (a roaming peer's) from one,
	// initiations and then responses from the other.
	send("10.99.0.3", transportData(), 5)
	send("fd99::3", handshakeInitiation(), 10)
	send("fd99::3", handshakeResponse(), 5)
	got := received()
	want := map[string]int{"10.99.0.2": 5, "fd99::2": 5, "10.99.0.3": 3, "fd99::3": 3}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("WireGuard's socket received %v, want %v", got, want)
	}

	dial := func() error {
		var err error
		inNS(t, a, func() error {
			var c net.Conn
			c, err = net.DialTimeout("tcp", "10.99.0.1:8080", 700*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return nil
		})
		return err
	}
	if err := dial(); err == nil {
		t.Error("a SYN to tcp/8080, which the node does not serve, got through")
	}
	in.Open = []netmap.PortRange{{Proto: "tcp", From: 8080}}
	e, _ := guardplan.Compile(in)
	if _, err := g.Set(e); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err != nil {
		t.Errorf("tcp/8080 opened in place, but: %v", err)
	}

	c, err := g.Counters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counters: %v", c)
	for v, min := range map[Verdict]uint64{VerdictNotIP: 1, VerdictICMP: 2, VerdictWGKnown: 10, VerdictClosed: 1, VerdictService: 1} {
		if c[v] < min {
			t.Errorf("counter %s = %d, want at least %d", v, c[v], min)
		}
	}
	for v, want := range map[Verdict]uint64{VerdictWGRoam: 3, VerdictWGHandshake: 3, VerdictWGRateLimited: 2 + 7, VerdictWGUnknown: 5} {
		if c[v] != want {
			t.Errorf("counter %s = %d, want %d", v, c[v], want)
		}
	}

	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, "ip", "-n", b, "link", "show", "b0"); strings.Contains(out, "prog/xdp") {
		t.Errorf("the program is still attached after Close:\n%s", out)
	}
}

// to is the guarded side's address in the sender's family.
func to(from string) string {
	if strings.Contains(from, ":") {
		return "fd99::1"
	}
	return "10.99.0.1"
}

// TestGuardOnTwoInterfaces: one guard (one program, one set of maps) runs
// on a gateway's underlay and WAN interfaces at once; each interface takes
// it once; Close detaches it from both.
func TestGuardOnTwoInterfaces(t *testing.T) {
	a, b := vethPair(t, "two")
	sh(t, "ip", "-n", a, "link", "add", "a1", "type", "veth", "peer", "name", "b1", "netns", b)
	sh(t, "ip", "-n", b, "link", "set", "b1", "up")
	g := loadGuard(t, guardplan.Input{WireGuardPorts: []int{51820}, Local: []netip.Addr{netip.MustParseAddr("10.99.0.1")}, HandshakesPerSource: 1, HandshakesTotal: 1, WindowNanos: 1e9})
	inNS(t, b, func() error { return g.Attach("b0", "") })
	inNS(t, b, func() error { return g.Attach("b1", "") })
	inNS(t, b, func() error {
		if err := g.Attach("b1", ""); err == nil {
			return fmt.Errorf("attached twice to b1")
		}
		return nil
	})
	if got := g.Interfaces(); len(got) != 2 || got[0] != "b0" || got[1] != "b1" || g.Interface() != "b0" {
		t.Fatalf("attached to %v (first %q)", got, g.Interface())
	}
	if c, err := g.Dump(); err != nil || c.Interface != "b0,b1" {
		t.Errorf("dump says %q (%v)", c.Interface, err)
	}
	for _, ifc := range []string{"b0", "b1"} {
		if out := sh(t, "ip", "-n", b, "link", "show", ifc); !strings.Contains(out, "prog/xdp") {
			t.Errorf("no XDP program on %s:\n%s", ifc, out)
		}
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ifc := range []string{"b0", "b1"} {
		if out := sh(t, "ip", "-n", b, "link", "show", ifc); strings.Contains(out, "prog/xdp") {
			t.Errorf("XDP program left on %s after Close:\n%s", ifc, out)
		}
	}
}
