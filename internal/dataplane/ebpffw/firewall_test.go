package ebpffw

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/statemesh/statemesh/internal/dataplane/fwplan"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

var (
	node = netip.MustParseAddr("100.64.0.5")
	pod  = netip.MustParseAddr("10.0.0.70")
)

func policy() *netmap.Firewall {
	p := netip.MustParsePrefix
	return &netmap.Firewall{
		Rules: []netmap.FirewallRule{
			{Comment: "segment web: members", Set: "seg_web"},
			{Comment: "rule db", Set: "seg_app", Ports: []netmap.PortRange{{Proto: "tcp", From: 5432, To: 5432}}},
			{Comment: "rule dns", Set: "seg_app", Ports: []netmap.PortRange{{Proto: "udp", From: 53, To: 54}, {Proto: "icmp"}}},
			{Comment: "rule ops", Set: "seg_ops", Ports: []netmap.PortRange{{Proto: "any"}}},
		},
		Sets: map[string][]netip.Prefix{
			"seg_web": {p("100.64.1.16/28"), p("fd7a::2/128")},
			"seg_app": {p("100.64.2.0/24"), p("100.64.2.7/32"), p("fd7a:1::/64")},
			"seg_ops": {p("100.64.9.0/24"), p("100.64.1.20/32")},
		},
	}
}

func load(t *testing.T, fw *netmap.Firewall, gateway bool) *Firewall {
	t.Helper()
	testenv.RequireRoot(t)
	f, err := Load(Options{L2: 14, MaxSources: 1024, MaxFlows: 1024})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	e, err := fwplan.Compile(fw)
	if err != nil {
		t.Fatal(err)
	}
	st := State{Dests: []netip.Prefix{netip.PrefixFrom(node, 32), netip.MustParsePrefix("10.0.0.64/26"), netip.MustParsePrefix("fd7a:5::5/128")}, GatewayEcho: gateway, UDPWarm: true}
	if err := f.Set(e, st); err != nil {
		t.Fatal(err)
	}
	return f
}

// run runs a program on a frame: whether it passes and whether it marks.
func run(t *testing.T, p *ebpf.Program, frame []byte) (pass, marked bool) {
	t.Helper()
	ctx := make([]byte, 192)
	ret, err := p.Run(&ebpf.RunOptions{Data: frame, Context: make([]byte, 192), ContextOut: ctx})
	if err != nil {
		t.Fatal(err)
	}
	return ret == tcOK, binary.LittleEndian.Uint32(ctx[skbMark:])&DefaultMark != 0
}

func icmpEcho(src, dst netip.Addr, typ byte) []byte {
	proto := uint8(1)
	if src.Is6() {
		proto = 58
	}
	return ipPacket(src, dst, proto, []byte{typ, 0, 0, 0, 0, 1, 0, 1})
}

// Every packet of a grid gets the verdict the policy states (fwplan.Allowed,
// the reference nftables' overlay chain implements): allowed ones pass
// marked, denied ones are dropped.
func TestPolicyVerdicts(t *testing.T) {
	fw := policy()
	f := load(t, fw, false)
	srcs := []string{"100.64.1.17", "100.64.1.20", "100.64.2.9", "100.64.2.7", "100.64.9.1", "192.0.2.1"}
	for _, s := range srcs {
		src := netip.MustParseAddr(s)
		for _, dst := range []netip.Addr{node, pod} {
			for _, c := range []struct {
				proto uint8
				port  uint16
				frame []byte
			}{
				{fwplan.ProtoTCP, 5432, tcp(src, dst, 40000, 5432, tcpSYN)},
				{fwplan.ProtoTCP, 80, tcp(src, dst, 40000, 80, tcpSYN)},
				{fwplan.ProtoUDP, 53, udp(src, dst, 40000, 53, make([]byte, 20))},
				{fwplan.ProtoUDP, 4789, udp(src, dst, 40000, 4789, make([]byte, 20))},
				{fwplan.ProtoICMP, fwplan.EchoV4, icmpEcho(src, dst, 8)},
				{47, 0, ipPacket(src, dst, 47, make([]byte, 8))},
			} {
				want := fwplan.Allowed(fw, src, c.proto, c.port)
				pass, marked := run(t, f.in, c.frame)
				if pass != want || marked != want {
					t.Errorf("%s → %s %d/%d: pass %v marked %v, the policy says %v", src, dst, c.proto, c.port, pass, marked, want)
				}
			}
		}
	}
	for _, c := range []struct {
		src  string
		port uint16
		want bool
	}{{"fd7a:1::9", 5432, true}, {"fd7a:1::9", 80, false}, {"fd7a::2", 80, true}, {"fd7a::3", 80, false}} {
		src := netip.MustParseAddr(c.src)
		if pass, marked := run(t, f.in, tcp(src, netip.MustParseAddr("fd7a:5::5"), 40000, c.port, tcpSYN)); pass != c.want || marked != c.want {
			t.Errorf("%s → tcp/%d: pass %v marked %v, want %v", c.src, c.port, pass, marked, c.want)
		}
	}
}

// What the program leaves to nftables passes unmarked: transit, ICMP other
// than echo requests, fragments, IPv6 extension headers.
func TestUnjudgedPassUnmarked(t *testing.T) {
	f := load(t, policy(), false)
	stranger := netip.MustParseAddr("192.0.2.1")
	frag := tcp(stranger, node, 40000, 80, tcpSYN)
	frag[14+6] = 0x20 // more fragments
	for name, frame := range map[string][]byte{
		"transit":         tcp(stranger, netip.MustParseAddr("100.64.7.7"), 40000, 80, tcpSYN),
		"echo reply":      icmpEcho(stranger, node, 0),
		"frag needed":     icmpEcho(stranger, node, 3),
		"fragment":        frag,
		"ipv6 hop-by-hop": ipPacket(netip.MustParseAddr("fd7a:9::1"), netip.MustParseAddr("fd7a:5::5"), 0, make([]byte, 16)),
		"not ip (arp)":    ether(0x0806, make([]byte, 28)),
	} {
		if pass, marked := run(t, f.in, frame); !pass || marked {
			t.Errorf("%s: pass %v marked %v, want pass unmarked", name, pass, marked)
		}
	}
	if pass, _ := run(t, f.in, icmpEcho(stranger, node, 8)); pass {
		t.Error("an echo request from outside the policy passed a node")
	}
	g := load(t, policy(), true)
	if pass, marked := run(t, g.in, icmpEcho(stranger, node, 8)); !pass || !marked {
		t.Error("a gateway dropped an echo request")
	}
}

// A connection the node (or a pod) opened through the overlay: the egress
// program records it, its replies pass as established though the policy
// admits nothing from there; other ports of the same peer stay closed.
func TestEstablished(t *testing.T) {
	f := load(t, policy(), false)
	remote := netip.MustParseAddr("192.0.2.1")
	reply := tcp(remote, node, 443, 41000, tcpSYN|tcpACK)
	if _, marked := run(t, f.in, reply); marked {
		t.Fatal("a reply was marked before the node sent anything (it is conntrack's to judge)")
	}
	if pass, _ := run(t, f.out, tcp(node, remote, 41000, 443, tcpSYN)); !pass {
		t.Fatal("egress dropped")
	}
	if pass, marked := run(t, f.in, reply); !pass || !marked {
		t.Errorf("the reply: pass %v marked %v", pass, marked)
	}
	if _, marked := run(t, f.in, tcp(remote, node, 443, 41001, tcpSYN|tcpACK)); marked {
		t.Error("another port of the same peer was marked")
	}
	if pass, _ := run(t, f.in, tcp(remote, node, 443, 41001, tcpSYN)); pass {
		t.Error("a SYN from the same peer passed")
	}
	// UDP too (a DNS query from a pod).
	run(t, f.out, udp(pod, remote, 53000, 53, make([]byte, 20)))
	if pass, _ := run(t, f.in, udp(remote, pod, 53, 53000, make([]byte, 40))); !pass {
		t.Error("the DNS reply was dropped")
	}
	c, err := f.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c[VerdictEstablished] != 2 || c[VerdictDenied] != 1 || c[VerdictUnjudged] != 2 {
		t.Errorf("counters %v", c)
	}
}

// A member joining a set is admitted in place.
func TestSetInPlace(t *testing.T) {
	fw := policy()
	f := load(t, fw, false)
	newcomer := netip.MustParseAddr("100.64.3.3")
	frame := tcp(newcomer, node, 40000, 5432, tcpSYN)
	if pass, _ := run(t, f.in, frame); pass {
		t.Fatal("passed before joining")
	}
	fw.Sets["seg_app"] = append(fw.Sets["seg_app"], netip.PrefixFrom(newcomer, 32))
	e, _ := fwplan.Compile(fw)
	if err := f.Set(e, State{Dests: []netip.Prefix{netip.PrefixFrom(node, 32)}}); err != nil {
		t.Fatal(err)
	}
	if pass, _ := run(t, f.in, frame); !pass {
		t.Error("dropped after joining")
	}
	// The pod prefix left the destinations: traffic to it is transit now.
	if pass, marked := run(t, f.in, tcp(netip.MustParseAddr("192.0.2.1"), pod, 40000, 80, tcpSYN)); !pass || marked {
		t.Errorf("to a prefix no longer the node's: pass %v marked %v, want transit", pass, marked)
	}
}

// Transit a gateway forwards into the tunnel is not recorded as a flow of
// the node's: its "replies" meet the policy.
func TestEgressRecordsOnlyOwnFlows(t *testing.T) {
	f := load(t, policy(), false)
	other, remote := netip.MustParseAddr("100.64.33.3"), netip.MustParseAddr("192.0.2.1")
	run(t, f.out, tcp(other, remote, 41000, 443, tcpSYN))
	if pass, _ := run(t, f.in, tcp(remote, other, 443, 41000, tcpSYN|tcpACK)); !pass {
		t.Error("transit back was dropped (it is not the node's to judge)")
	}
	// A packet leaving with a foreign source is not recorded either.
	run(t, f.out, tcp(remote, node, 443, 41000, tcpSYN))
	var n int
	var k, v []byte
	for it := f.m.flows.Iterate(); it.Next(&k, &v); {
		n++
	}
	if n != 0 {
		t.Errorf("%d flows recorded from transit", n)
	}
}

// What the policy denies but conntrack may know from before the program
// (an agent restart) is left to nftables: TCP segments other than a bare
// SYN, and UDP until the flow table is warm.
func TestDeniedButMaybeEstablished(t *testing.T) {
	f := load(t, policy(), false)
	stranger := netip.MustParseAddr("192.0.2.1")
	if pass, marked := run(t, f.in, tcp(stranger, node, 443, 41000, tcpACK)); !pass || marked {
		t.Errorf("a denied ACK: pass %v marked %v, want unmarked to nftables", pass, marked)
	}
	if pass, _ := run(t, f.in, tcp(stranger, node, 40000, 80, tcpSYN)); pass {
		t.Error("a denied SYN passed")
	}
	if pass, _ := run(t, f.in, udp(stranger, node, 53, 40000, make([]byte, 20))); pass {
		t.Error("denied UDP passed with a warm flow table")
	}
	e, _ := fwplan.Compile(policy())
	if err := f.Set(e, State{Dests: []netip.Prefix{netip.PrefixFrom(node, 32)}}); err != nil {
		t.Fatal(err)
	}
	if pass, marked := run(t, f.in, udp(stranger, node, 53, 40000, make([]byte, 20))); !pass || marked {
		t.Errorf("denied UDP before the flow table is warm: pass %v marked %v, want unmarked to nftables", pass, marked)
	}
}
