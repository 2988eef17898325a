package guardplan

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/statemesh/statemesh/internal/netmap"
)

func pfx(s string) netip.Prefix { return Mapped(netip.MustParsePrefix(s)) }

func TestCompile(t *testing.T) {
	in := Input{
		WireGuardPorts:      []int{51820, 51821},
		Peers:               []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")},
		Learned:             []netip.Addr{netip.MustParseAddr("198.51.100.7")},
		WireGuardFrom:       []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")},
		BGPPeers:            []netip.Addr{netip.MustParseAddr("10.0.0.254")},
		Management:          []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28")},
		ManagementPorts:     []netmap.PortRange{{Proto: "tcp", From: 22, To: 22}},
		Open:                []netmap.PortRange{{Proto: "tcp", From: 8080, To: 8081}, {Proto: "icmp"}},
		Local:               []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.1")},
		HandshakesPerSource: 4, HandshakesTotal: 100, WindowNanos: 1e9, EphemeralFrom: 32768, EphemeralTo: 60999,
	}
	got, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	want := Entries{
		Sources: map[netip.Prefix]uint32{
			pfx("10.0.0.2/32"):     ClassWireGuard,
			pfx("fd00::2/128"):     ClassWireGuard,
			pfx("198.51.100.7/32"): ClassWireGuard,
			pfx("10.0.0.0/24"):     ClassWireGuard,
			pfx("10.0.0.254/32"):   ClassBGP | ClassWireGuard, // inside the underlay range
			pfx("192.0.2.0/28"):    ClassManagement,
		},
		Ports: map[PortKey]uint32{
			MakePortKey(ProtoUDP, 51820): PortValue(KindWireGuard, ClassWireGuard),
			MakePortKey(ProtoUDP, 51821): PortValue(KindWireGuard, ClassWireGuard),
			MakePortKey(ProtoTCP, 179):   PortValue(KindRestricted, ClassBGP),
			MakePortKey(ProtoUDP, 3784):  PortValue(KindRestricted, ClassBGP),
			MakePortKey(ProtoUDP, 4784):  PortValue(KindRestricted, ClassBGP),
			MakePortKey(ProtoTCP, 22):    PortValue(KindRestricted, ClassManagement),
			MakePortKey(ProtoTCP, 8080):  PortValue(KindOpen, 0),
			MakePortKey(ProtoTCP, 8081):  PortValue(KindOpen, 0),
		},
		Local:  []netip.Addr{pfx("10.0.0.1/32").Addr()},
		Config: Config{WindowNanos: 1e9, HandshakesPerSource: 4, HandshakesTotal: 100, EphemeralFrom: 32768, EphemeralTo: 60999},
	}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("Compile (-want +got):\n%s", d)
	}
}

// An open port stays open when it is also a restricted one; a port range
// too large to expand is an error that names it.
func TestCompilePortsMerge(t *testing.T) {
	e, err := Compile(Input{ManagementPorts: []netmap.PortRange{{Proto: "tcp", From: 22}}, Open: []netmap.PortRange{{Proto: "tcp", From: 22}}})
	if err != nil {
		t.Fatal(err)
	}
	if v := e.Ports[MakePortKey(ProtoTCP, 22)]; v != PortValue(KindOpen, 0) {
		t.Errorf("tcp/22 = %#x, want open", v)
	}
	if _, err := Compile(Input{Open: []netmap.PortRange{{Proto: "udp", From: 1, To: 65535}}}); err == nil {
		t.Error("a 65,535-port range compiled")
	}
}

// A roamed endpoint (learned from the device) is one source put; a peer
// removed is one source delete; nothing else moves.
func TestDiffInPlace(t *testing.T) {
	base := Input{WireGuardPorts: []int{51820}, Peers: []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")}, WindowNanos: 1e9}
	old, _ := Compile(base)
	if d := Diff(old, old); !d.Empty() {
		t.Errorf("equal compilations differ: %+v", d)
	}
	next := base
	next.Peers = []netip.Addr{netip.MustParseAddr("10.0.0.2")}
	next.Learned = []netip.Addr{netip.MustParseAddr("203.0.113.9")}
	nw, _ := Compile(next)
	want := Delta{SourcePut: []SourceEntry{{pfx("203.0.113.9/32"), ClassWireGuard}}, SourceDel: []netip.Prefix{pfx("10.0.0.3/32")}}
	if d := cmp.Diff(want, Diff(old, nw), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("Diff (-want +got):\n%s", d)
	}
	full := Diff(Entries{}, nw)
	if len(full.SourcePut) != 2 || len(full.PortPut) != 1 || full.Config == nil {
		t.Errorf("Diff from nothing = %+v, want every entry", full)
	}
}

func TestMapped(t *testing.T) {
	for _, s := range []string{"10.1.2.0/24", "fd00::/64", "0.0.0.0/0"} {
		p := netip.MustParsePrefix(s)
		if got := Unmapped(Mapped(p)); got != p {
			t.Errorf("Unmapped(Mapped(%s)) = %s", p, got)
		}
	}
}

// A gateway's map: WireGuard on its port and its backbone links' ports,
// from peers' and links' endpoints (IPv4-mapped ones unmapped), BGP from
// its routers; with management sources the open ports are restricted.
func TestFromMap(t *testing.T) {
	m := netmap.Map{
		Interface: netmap.Interface{ListenPort: 51820},
		Peers: []netmap.Peer{
			{Name: "a", Endpoint: netip.MustParseAddrPort("[::ffff:192.0.2.2]:51820")},
			{Name: "roamer"},
		},
		Routing: &netmap.Routing{
			Links:    []netmap.BackboneLink{{ListenPort: 51900, Endpoint: netip.MustParseAddrPort("198.51.100.1:51900")}},
			External: []netmap.ExternalPeer{{Address: netip.MustParseAddr("192.0.2.254")}},
		},
	}
	got := FromMap(m, Node{Open: []netmap.PortRange{{Proto: "tcp", From: 22}}, ManagementFrom: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}})
	want := Input{
		WireGuardPorts:      []int{51820, 51900},
		Peers:               []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("198.51.100.1")},
		BGPPeers:            []netip.Addr{netip.MustParseAddr("192.0.2.254")},
		Management:          []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")},
		ManagementPorts:     []netmap.PortRange{{Proto: "tcp", From: 22}},
		HandshakesPerSource: DefaultHandshakesPerSource, HandshakesTotal: DefaultHandshakesTotal, WindowNanos: DefaultWindowNanos,
		EphemeralFrom: DefaultEphemeralFrom, EphemeralTo: DefaultEphemeralTo,
	}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("FromMap (-want +got):\n%s", d)
	}
}
