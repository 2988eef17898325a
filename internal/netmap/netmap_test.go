package netmap

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func randMap(r *rand.Rand) Map {
	m := Map{Revision: r.Int64N(100), Self: Self{Name: "self", Role: RoleNode}, Interface: Interface{Name: "sm0", MTU: 1400 + r.IntN(40), ListenPort: 51820},
		Forwarding: r.IntN(2) == 0}
	for i := range r.IntN(8) {
		var k Key
		k[0] = byte(i)
		m.Peers = append(m.Peers, Peer{Name: fmt.Sprintf("p%d", i), PublicKey: k, AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(r.IntN(4))}), 32)},
			PersistentKeepalive: r.IntN(2) * 25})
	}
	for range r.IntN(3) {
		m.Routes = append(m.Routes, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(3)), 0, 0}), 16))
	}
	if r.IntN(3) > 0 {
		fw := &Firewall{Sets: map[string][]netip.Prefix{}}
		sets := []string{"seg_a", "seg_b"}[:1+r.IntN(2)]
		for _, s := range sets {
			for range r.IntN(4) {
				fw.Sets[s] = append(fw.Sets[s], netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(r.IntN(3)), byte(r.IntN(3))}), 32))
			}
			fw.Sets[s] = SortPrefixes(fw.Sets[s])
			fw.Rules = append(fw.Rules, FirewallRule{Comment: "segment " + s, Set: s})
		}
		if r.IntN(2) == 0 {
			fw.Rules[0].Ports = []PortRange{{Proto: "tcp", From: 80, To: 80}}
		}
		m.Firewall = fw
	}
	return m.Normalize()
}

// TestDiffApplyRoundTrip: applying Diff(a, b) to a gives b, for random maps.
func TestDiffApplyRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 2000 {
		a, b := randMap(r), randMap(r)
		d := Diff(a, b)
		got := a.Apply(d)
		if !got.Equal(b) {
			t.Fatalf("case %d: Apply(Diff) differs:\na   %+v\nb   %+v\ngot %+v\ndelta %+v", i, a.Firewall, b.Firewall, got.Firewall, d)
		}
		if a.Equal(b) != d.Empty() {
			t.Fatalf("case %d: equal maps %v but empty delta %v", i, a.Equal(b), d.Empty())
		}
		if !a.Equal(a.Clone()) {
			t.Fatal("clone differs")
		}
	}
}

func TestKeys(t *testing.T) {
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseKey(k.PublicKey().String())
	if err != nil || p != k.PublicKey() {
		t.Fatalf("round trip: %v", err)
	}
	for _, bad := range []string{"", "abc", "AAAA"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}
