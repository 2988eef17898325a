package fwplan

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
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
			"seg_web": {p("10.0.0.16/28"), p("fd7a::2/128")},
			"seg_app": {p("10.0.1.0/24"), p("10.0.1.7/32"), p("fd7a:1::/64")},
			"seg_ops": {p("100.64.9.0/24"), p("10.0.0.20/32")},
		},
	}
}

func TestAllowedAndCompiledAgree(t *testing.T) {
	fw := policy()
	e, err := Compile(fw)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	for _, c := range []struct {
		src   string
		proto uint8
		port  uint16
		want  bool
	}{
		{"10.0.0.17", ProtoTCP, 9999, true},      // segment member: everything
		{"10.0.0.20", ProtoUDP, 1, true},         // in web (range) and ops (host)
		{"10.0.1.9", ProtoTCP, 5432, true},       // app → db port
		{"10.0.1.9", ProtoTCP, 5433, false},      // app, another port
		{"10.0.1.7", ProtoUDP, 54, true},         // app (host and range), dns range
		{"10.0.1.9", ProtoICMP, EchoV4, true},    // icmp: echo requests
		{"10.0.1.9", ProtoICMP, 13, false},       // not other ICMP types
		{"fd7a:1::5", ProtoICMPv6, EchoV6, true}, // IPv6 echo
		{"fd7a:1::5", ProtoTCP, 5432, true},
		{"100.64.9.1", ProtoUDP, 4789, true}, // ops: any
		{"192.0.2.1", ProtoTCP, 5432, false}, // nobody
		{"fd7a::3", ProtoTCP, 80, false},
	} {
		src := a(c.src)
		if got := Allowed(fw, src, c.proto, c.port); got != c.want {
			t.Errorf("Allowed(%s, %d/%d) = %v, want %v", c.src, c.proto, c.port, got, c.want)
		}
		if got := e.Verdict(src, c.proto, c.port); got != c.want {
			t.Errorf("compiled verdict (%s, %d/%d) = %v, want %v", c.src, c.proto, c.port, got, c.want)
		}
	}
	if e, _ := Compile(nil); !e.Verdict(a("192.0.2.1"), ProtoTCP, 1) {
		t.Error("no policy must allow everything")
	}
}

// Random policies: the compiled maps agree with the policy on every
// packet of a grid around the sets' members.
func TestCompiledAgreesWithPolicyRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(22, 1))
	protos := []string{"tcp", "udp", "icmp", "any"}
	for round := range 200 {
		fw := &netmap.Firewall{Sets: map[string][]netip.Prefix{}}
		var addrs []netip.Addr
		for s := range 1 + r.IntN(5) {
			name := fmt.Sprintf("s%d", s)
			for range 1 + r.IntN(4) {
				a := netip.AddrFrom4([4]byte{10, 0, byte(r.IntN(4)), byte(r.IntN(256))})
				bits := []int{32, 30, 28, 24, 22}[r.IntN(5)]
				fw.Sets[name] = append(fw.Sets[name], netip.PrefixFrom(a, bits).Masked())
				addrs = append(addrs, a)
			}
			fw.Sets[name] = netmap.SortPrefixes(fw.Sets[name])
			for range 1 + r.IntN(2) {
				rule := netmap.FirewallRule{Set: name}
				for range r.IntN(3) {
					from := 1 + r.IntN(100)
					rule.Ports = append(rule.Ports, netmap.PortRange{Proto: protos[r.IntN(len(protos))], From: from, To: from + r.IntN(3)})
				}
				fw.Rules = append(fw.Rules, rule)
			}
		}
		e, err := Compile(fw)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, netip.MustParseAddr("10.0.3.255"), netip.MustParseAddr("192.0.2.1"))
		for _, a := range addrs {
			for _, pp := range [][2]int{{ProtoTCP, 1 + r.IntN(104)}, {ProtoUDP, 1 + r.IntN(104)}, {ProtoICMP, EchoV4}, {ProtoICMP, 0}, {47, 0}} {
				want := Allowed(fw, a, uint8(pp[0]), uint16(pp[1]))
				if got := e.Verdict(a, uint8(pp[0]), uint16(pp[1])); got != want {
					t.Fatalf("round %d: %s %d/%d: compiled %v, policy %v\n%+v", round, a, pp[0], pp[1], got, want, fw)
				}
			}
		}
	}
}

func TestTooManySets(t *testing.T) {
	fw := &netmap.Firewall{Sets: map[string][]netip.Prefix{}}
	for i := range MaxSets + 1 {
		fw.Rules = append(fw.Rules, netmap.FirewallRule{Set: fmt.Sprint("s", i)})
	}
	if _, err := Compile(fw); !errors.Is(err, ErrTooLarge) {
		t.Errorf("%d sets: %v, want ErrTooLarge", MaxSets+1, err)
	}
}

// A member joining a set is one source put; nothing else moves.
func TestDiffMemberJoins(t *testing.T) {
	fw := policy()
	old, _ := Compile(fw)
	fw.Sets["seg_web"] = append(fw.Sets["seg_web"], netip.MustParsePrefix("10.0.5.5/32"))
	nw, _ := Compile(fw)
	d := Diff(old, nw)
	if len(d.SourcePut) != 1 || len(d.SourceDel) != 0 || len(d.PortPut) != 0 || len(d.PortDel) != 0 || d.Config {
		t.Errorf("delta %+v", d)
	}
	if !Diff(nw, nw).Empty() {
		t.Error("equal entries differ")
	}
}
