package xdpguard

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/statemesh/statemesh/internal/dataplane/guardplan"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

var (
	self      = netip.MustParseAddr("192.0.2.1")
	self6     = netip.MustParseAddr("2001:db8::1")
	peer      = netip.MustParseAddr("192.0.2.2")
	peer6     = netip.MustParseAddr("2001:db8::2")
	inRange   = netip.MustParseAddr("10.20.0.9")
	bgpPeer   = netip.MustParseAddr("192.0.2.254")
	admin     = netip.MustParseAddr("198.51.100.10")
	stranger  = netip.MustParseAddr("203.0.113.66")
	stranger6 = netip.MustParseAddr("2001:db8:ffff::66")
)

func testInput() guardplan.Input {
	return guardplan.Input{
		WireGuardPorts:      []int{51820},
		Peers:               []netip.Addr{peer, peer6},
		WireGuardFrom:       []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")},
		BGPPeers:            []netip.Addr{bgpPeer},
		Management:          []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		ManagementPorts:     []netmap.PortRange{{Proto: "tcp", From: 22}},
		Open:                []netmap.PortRange{{Proto: "tcp", From: 443}},
		Local:               []netip.Addr{self, self6},
		HandshakesPerSource: 3,
		HandshakesTotal:     1000,
		WindowNanos:         60e9, // long: the test must not cross a window
		EphemeralFrom:       32768,
		EphemeralTo:         60999,
	}
}

func loadGuard(t *testing.T, in guardplan.Input) *Guard {
	t.Helper()
	testenv.RequireRoot(t)
	g, err := Load(Options{MaxSources: 1024, MaxTracked: 1024})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	e, err := guardplan.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Set(e); err != nil {
		t.Fatal(err)
	}
	return g
}

// TestVerdicts runs the program in the kernel (BPF_PROG_TEST_RUN) on one
// frame per rule and checks both the action and the counter it bumped.
func TestVerdicts(t *testing.T) {
	g := loadGuard(t, testInput())
	arp := ether(0x0806, make([]byte, 28))
	for _, c := range []struct {
		name  string
		frame []byte
		want  Verdict
	}{
		{"arp passes", arp, VerdictNotIP},
		{"runt frame", []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x00, 0x45}, VerdictMalformed},
		{"wireguard from a peer", udp(peer, self, 51820, 51820, transportData()), VerdictWGKnown},
		{"wireguard from a peer over IPv6", udp(peer6, self6, 51820, 51820, transportData()), VerdictWGKnown},
		{"wireguard from the underlay range", udp(inRange, self, 40000, 51820, transportData()), VerdictWGKnown},
		{"transport data from a stranger (a roaming peer?)", udp(stranger, self, 40000, 51820, transportData()), VerdictWGRoam},
		{"transport data too short for its tag", udp(stranger, self, 40000, 51820, transportData()[:31]), VerdictWGUnknown},
		{"handshake response from a stranger", udp(stranger, self, 40000, 51820, handshakeResponse()), VerdictWGUnknown},
		{"handshake initiation of the wrong length", udp(stranger, self, 40000, 51820, handshakeInitiation()[:140]), VerdictWGUnknown},
		{"handshake from a stranger", udp(stranger, self, 40000, 51820, handshakeInitiation()), VerdictWGHandshake},
		{"handshake from a stranger over IPv6", udp(stranger6, self6, 40000, 51820, handshakeInitiation()), VerdictWGHandshake},
		{"bgp from the router", tcp(bgpPeer, self, 40000, 179, tcpSYN), VerdictService},
		{"bgp from a stranger", tcp(stranger, self, 40000, 179, tcpSYN), VerdictSource},
		{"bfd from the router", udp(bgpPeer, self, 49152, 3784, make([]byte, 24)), VerdictService},
		{"ssh from the admin range", tcp(admin, self, 40000, 22, tcpSYN), VerdictService},
		{"ssh from a stranger", tcp(stranger, self, 40000, 22, tcpSYN), VerdictSource},
		{"open port from anyone", tcp(stranger, self, 40000, 443, tcpSYN), VerdictService},
		{"syn to a closed port", tcp(stranger, self, 40000, 8080, tcpSYN), VerdictClosed},
		{"reply segment of the node's connection", tcp(stranger, self, 443, 41000, tcpSYN|tcpACK), VerdictReply},
		{"udp reply to an ephemeral port", udp(stranger, self, 53, 45000, make([]byte, 40)), VerdictReply},
		{"udp to a closed low port", udp(stranger, self, 40000, 161, make([]byte, 40)), VerdictClosed},
		{"icmp", ipPacket(stranger, self, 1, make([]byte, 8)), VerdictICMP},
		{"icmpv6", ipPacket(stranger6, self6, 58, make([]byte, 8)), VerdictICMP},
		{"ipv6 hop-by-hop (MLD)", ipPacket(peer6, self6, 0, make([]byte, 16)), VerdictIPv6Ext},
		{"gre to the node", ipPacket(stranger, self, 47, make([]byte, 8)), VerdictProtocol},
		{"transit traffic", udp(stranger, netip.MustParseAddr("192.0.2.99"), 1, 2, nil), VerdictNotLocal},
		{"broadcast", udp(stranger, netip.MustParseAddr("255.255.255.255"), 67, 68, make([]byte, 300)), VerdictNotLocal},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, err := g.Counters()
			if err != nil {
				t.Fatal(err)
			}
			pass, err := g.Test(c.frame)
			if err != nil {
				t.Fatal(err)
			}
			if pass == c.want.Drop() {
				t.Errorf("pass = %v, want the action of %s", pass, c.want)
			}
			after, _ := g.Counters()
			for _, v := range Verdicts() {
				want := before[v]
				if v == c.want {
					want++
				}
				if after[v] != want {
					t.Errorf("counter %s: %d → %d, want %d", v, before[v], after[v], want)
				}
			}
		})
	}
}

// Handshake initiations from one unknown source pass up to the per-source
// limit; another source has its own allowance; the total limit caps all.
func TestHandshakeRateLimit(t *testing.T) {
	in := testInput()
	in.HandshakesTotal = 5
	g := loadGuard(t, in)
	hs := func(src netip.Addr) bool {
		pass, err := g.Test(udp(src, self, 40000, 51820, handshakeInitiation()))
		if err != nil {
			t.Fatal(err)
		}
		return pass
	}
	var got []bool
	for range 5 {
		got = append(got, hs(stranger))
	}
	if want := []bool{true, true, true, false, false}; !equalBools(got, want) {
		t.Errorf("one stranger's handshakes passed %v, want %v", got, want)
	}
	other := netip.MustParseAddr("203.0.113.67")
	got = []bool{hs(other), hs(other), hs(other)}
	if want := []bool{true, true, false}; !equalBools(got, want) {
		t.Errorf("a second stranger's handshakes passed %v, want %v (total limit 5)", got, want)
	}
	if !hs(peer) {
		t.Error("a known peer's handshake was limited")
	}
	c, _ := g.Counters()
	if c[VerdictWGHandshake] != 5 || c[VerdictWGRateLimited] != 3 {
		t.Errorf("counters %v", c)
	}
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The maps change in place: a peer that roams (the device learned its new
// endpoint) passes at once, a removed peer no longer does, a port closed is
// closed, and the program stays the same one (no reload).
func TestUpdateInPlace(t *testing.T) {
	in := testInput()
	g := loadGuard(t, in)
	info, err := g.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	roamed := netip.MustParseAddr("203.0.113.200")
	data := func(src netip.Addr) bool {
		pass, err := g.Test(udp(src, self, 40000, 51820, transportData()))
		if err != nil {
			t.Fatal(err)
		}
		return pass
	}
	// Unknown, its data passes up to the per-source limit (3): enough for
	// WireGuard to authenticate one and move the peer's endpoint.
	if got := []bool{data(roamed), data(roamed), data(roamed), data(roamed)}; !equalBools(got, []bool{true, true, true, false}) {
		t.Fatalf("data from the roamed endpoint before it was learned passed %v, want the first 3 only", got)
	}
	in.Learned = []netip.Addr{roamed}
	in.Peers = []netip.Addr{peer6}
	in.Open = nil
	e, _ := guardplan.Compile(in)
	d, err := g.Set(e)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.SourcePut) != 1 || len(d.SourceDel) != 1 || len(d.PortDel) != 1 || len(d.PortPut) != 0 || d.Config != nil {
		t.Errorf("delta %+v: want one source in, one out, one port out", d)
	}
	if !data(roamed) {
		t.Error("data from the learned endpoint is dropped")
	}
	// The removed peer is a stranger now: its data is judged as an
	// unknown source's, within the per-source limit and then not at all.
	before, _ := g.Counters()
	if got := []bool{data(peer), data(peer), data(peer), data(peer)}; !equalBools(got, []bool{true, true, true, false}) {
		t.Errorf("data from the removed peer passed %v, want the first 3 only (an unknown source's limit)", got)
	}
	if after, _ := g.Counters(); after[VerdictWGKnown] != before[VerdictWGKnown] || after[VerdictWGRoam] != before[VerdictWGRoam]+3 {
		t.Errorf("the removed peer's data: wg_known %d → %d, wg_roam %d → %d; want it unknown", before[VerdictWGKnown], after[VerdictWGKnown], before[VerdictWGRoam], after[VerdictWGRoam])
	}
	if pass, _ := g.Test(tcp(stranger, self, 40000, 443, tcpSYN)); pass {
		t.Error("the closed port still passes")
	}
	info2, _ := g.prog.Info()
	if id2, _ := info2.ID(); id2 != id {
		t.Errorf("program id %d → %d", id, id2)
	}
	c, err := g.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Sources) != len(e.Sources) || len(c.Ports) != len(e.Ports) || len(c.Local) != 2 || c.Config != e.Config {
		t.Errorf("the kernel's maps hold %+v, want %+v", c, e)
	}
}

// The maps are pinned while the guard runs, another process reads them
// (statemesh guard), and Close removes the pins.
func TestInspectPinned(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a bpf filesystem: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	pins := filepath.Join(dir, "statemesh")
	g, err := Load(Options{MaxSources: 64, MaxTracked: 64, PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	e, _ := guardplan.Compile(testInput())
	if _, err := g.Set(e); err != nil {
		t.Fatal(err)
	}
	g.Test(udp(peer, self, 51820, 51820, transportData()))
	c, err := Inspect(pins)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Sources) != len(e.Sources) || len(c.Ports) != len(e.Ports) || c.Config != e.Config || c.Counters[VerdictWGKnown] != 1 {
		t.Errorf("inspected %+v, want the entries %+v and one wg_known", c, e)
	}
	g.Close()
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pins left after Close: %v", err)
	}
	if _, err := Inspect(pins); err == nil {
		t.Error("Inspect found maps after Close")
	}
}
