package topology

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
)

func TestBackboneLinksAreSymmetric(t *testing.T) {
	// peersPerRegion 3 (the world's regions plan 3 gateways): a full mesh.
	w := newWorldWith(t, 3, 3, 2, "routing: {bgp: true, bfd: {interval: 200ms, multiplier: 4}, backbone: {peersPerRegion: 3}}\n")
	w.populate(2, 1)
	maps := w.maps()
	gws := map[string]netmap.Map{}
	for name, m := range maps {
		if m.Self.Role == netmap.RoleGateway {
			gws[name] = m
		}
	}
	if len(gws) != 6 {
		t.Fatalf("%d gateways", len(gws))
	}
	for name, m := range gws {
		rt := m.Routing
		if rt == nil {
			t.Fatalf("%s has no routing in BIRD mode", name)
		}
		if len(rt.Links) != 5 || rt.BFDIntervalMs != 200 || rt.BFDMultiplier != 4 || len(rt.Accept) != 2 {
			t.Errorf("%s: %d links (want 5: every other gateway), BFD %d×%d, %d accepted regions", name, len(rt.Links), rt.BFDIntervalMs, rt.BFDMultiplier, len(rt.Accept))
		}
		for _, p := range m.Peers {
			if p.Role == netmap.RoleGateway && p.Region != m.Self.Region {
				t.Errorf("%s peers with %s on the mesh interface: BIRD mode uses backbone links", name, p.Name)
			}
		}
		for _, l := range rt.Links {
			other, ok := gws[l.Peer]
			if !ok {
				t.Fatalf("%s links to unknown %s", name, l.Peer)
			}
			i := slices.IndexFunc(other.Routing.Links, func(b netmap.BackboneLink) bool { return b.Peer == name })
			if i < 0 {
				t.Fatalf("%s links to %s, not back", name, l.Peer)
			}
			back := other.Routing.Links[i]
			if back.PeerAddress != l.Address.Addr() || l.PeerAddress != back.Address.Addr() || l.Address.Bits() != 31 ||
				!netip.PrefixFrom(l.PeerAddress, 31).Masked().Contains(l.Address.Addr()) {
				t.Errorf("%s↔%s: addresses %s/%s vs %s/%s", name, l.Peer, l.Address, l.PeerAddress, back.Address, back.PeerAddress)
			}
			if int(l.Endpoint.Port()) != back.ListenPort || int(back.Endpoint.Port()) != l.ListenPort {
				t.Errorf("%s↔%s: ports %d→%d, %d→%d", name, l.Peer, l.ListenPort, back.Endpoint.Port(), back.ListenPort, l.Endpoint.Port())
			}
			if l.PeerRegion != m.Self.Region && l.Endpoint.Addr() != w.ix.nodes[l.Peer].PublicEndpoint.Addr() {
				t.Errorf("%s→%s: a link to another region goes to the public endpoint", name, l.Peer)
			}
		}
	}
	// Each cluster is originated by exactly its designated gateway.
	for _, r := range w.plan.Regions {
		for _, c := range r.Clusters {
			d := w.ix.regions[r.Name].designated(c.Name)
			for name, m := range gws {
				// Both families (issue 15: BIRD mode announces IPv6).
				for _, p := range []netip.Prefix{c.OverlayIPv4, c.OverlayIPv6, c.PodIPv4, c.PodIPv6} {
					if !p.IsValid() {
						t.Fatalf("%s/%s: the dual-stack world lacks a prefix: %+v", r.Name, c.Name, c)
					}
					has := slices.Contains(m.Routing.Originate, p)
					if has != (name == d) {
						t.Errorf("%s/%s %s: %s originates it: %v (designated %s)", r.Name, c.Name, p, name, has, d)
					}
				}
				if !m.Routing.HasIPv6() || !m.Routing.RouterIPv6.IsValid() {
					t.Errorf("%s: routing without IPv6 (router IPv6 %v)", name, m.Routing.RouterIPv6)
				}
			}
		}
	}
}

func TestMixedModeKeepsMeshPeers(t *testing.T) {
	w := newWorldWith(t, 4, 2, 1, "routing: {bgp: true}\n")
	// Region r1 opts out: r0 and r1 talk through the mesh interface.
	w.plan.Regions[1].BGP = nil
	w.ix.SetPlan(w.plan, w.pol)
	w.populate(2, 1)
	m, _ := w.ix.Map("r0-gw0")
	if m.Routing == nil || len(m.Routing.Links) != 1 {
		t.Fatalf("r0-gw0 routing: %+v", m.Routing)
	}
	if !slices.ContainsFunc(m.Peers, func(p netmap.Peer) bool { return p.Region == "r1" && p.Role == netmap.RoleGateway }) {
		t.Error("r0's gateway lost its mesh peers to r1, which has no BIRD")
	}
	if m, _ := w.ix.Map("r1-gw0"); m.Routing != nil {
		t.Error("r1 runs BIRD though it opted out")
	}
}

// The bounded backbone (issue 20): gateway i of the larger region links
// gateways i..i+K−1 of the smaller; links are mutual; each gateway of a
// region pair of equal size has exactly min(K, n) links into the other,
// and every gateway at least one into every other region.
func TestBackboneLinkedIsBoundedAndMutual(t *testing.T) {
	region := func(slot, n, k int) *plan.Region {
		return &plan.Region{Slot: slot, Gateways: make([]plan.Gateway, n), BGP: &plan.RegionBGP{PeersPerRegion: k}}
	}
	for _, c := range []struct{ na, nb, k int }{{2, 2, 2}, {2, 2, 1}, {16, 16, 2}, {16, 16, 1}, {3, 5, 2}, {5, 3, 2}, {1, 16, 2}, {16, 1, 2}, {4, 4, 32}, {3, 7, 1}} {
		pa, pb := region(1, c.na, c.k), region(4, c.nb, c.k)
		degA, degB := make([]int, c.na), make([]int, c.nb)
		for i := range c.na {
			for j := range c.nb {
				a, b := pa.Slot*plan.GatewaySlots+i, pb.Slot*plan.GatewaySlots+j
				ab, ba := backboneLinked(pa, pb, a, b), backboneLinked(pb, pa, b, a)
				if ab != ba {
					t.Fatalf("%+v: %d→%d %v but %d→%d %v", c, a, b, ab, b, a, ba)
				}
				if ab {
					degA[i]++
					degB[j]++
				}
			}
		}
		l, s, nl, ns := degA, degB, c.na, c.nb
		if c.nb > c.na {
			l, s, nl, ns = degB, degA, c.nb, c.na
		}
		for i, d := range l {
			if d != min(c.k, ns) {
				t.Errorf("%+v: gateway %d of the larger region has %d links into the smaller, want %d", c, i, d, min(c.k, ns))
			}
		}
		for j, d := range s {
			if d < 1 || d > c.k*((nl+ns-1)/ns) {
				t.Errorf("%+v: gateway %d of the smaller region has %d links into the larger, want 1..%d", c, j, d, c.k*((nl+ns-1)/ns))
			}
			if nl == ns && d != min(c.k, ns) {
				t.Errorf("%+v: regions of equal size, gateway %d has %d links, want %d", c, j, d, min(c.k, ns))
			}
		}
	}
	// Gateways of one region are always linked (iBGP), whatever K.
	p := region(2, 16, 1)
	if !backboneLinked(p, p, 2*plan.GatewaySlots, 2*plan.GatewaySlots+9) {
		t.Error("gateways of one region are not linked")
	}
}

// A mesh of 3 regions × 3 gateways with peersPerRegion 1: each gateway has
// 2 iBGP links and 1 link into each other region (4, not the full mesh's
// 8), and every node still reaches every node hop by hop (checkInvariants
// walks BGP's choices: the designated gateway, else a gateway of this
// region linked to it, else a linked gateway of its region and table 5200)
// while gateways fail and return.
func TestBoundedBackboneReachesEverything(t *testing.T) {
	w := newWorldWith(t, 11, 3, 2, "routing: {bgp: true, backbone: {peersPerRegion: 1}}\n")
	w.populate(3, 1)
	maps := w.maps()
	for name, m := range maps {
		if m.Routing == nil {
			continue
		}
		intra, inter := 0, map[string]int{}
		for _, l := range m.Routing.Links {
			if l.PeerRegion == m.Self.Region {
				intra++
			} else {
				inter[l.PeerRegion]++
			}
		}
		if intra != 2 || len(inter) != 2 || inter["r0"]+inter["r1"]+inter["r2"] != 2 {
			t.Errorf("%s: %d iBGP links, other regions %v: want 2 and 1 into each of the 2 others", name, intra, inter)
		}
	}
	w.checkInvariants(maps)
	for _, r := range []string{"r0", "r1", "r2"} {
		for _, g := range w.ix.Gateways(r)[:2] {
			w.ix.SetHealth(g, false)
			w.checkInvariants(w.maps())
		}
		for _, g := range w.ix.Gateways(r)[:2] {
			w.ix.SetHealth(g, true)
		}
	}
	w.checkInvariants(w.maps())
}

// When the only healthy gateways of two regions are not linked (with
// peersPerRegion 1 every region keeps one gateway, the wrong one), the
// plan adds a spare link between them so BGP still joins the regions,
// and drops it once the planned links have healthy ends again.
func TestSpareLinkJoinsUnlinkedSurvivors(t *testing.T) {
	w := newWorldWith(t, 5, 2, 1, "routing: {bgp: true, backbone: {peersPerRegion: 1}}\n")
	w.populate(3, 1)
	linked := func(a, b string) bool {
		m, _ := w.ix.Map(a)
		return m.Routing != nil && slices.ContainsFunc(m.Routing.Links, func(l netmap.BackboneLink) bool { return l.Peer == b })
	}
	r0, r1 := w.ix.Gateways("r0"), w.ix.Gateways("r1")
	x, y := "", ""
	for _, a := range r0 {
		for _, b := range r1 {
			if x == "" && !linked(a, b) {
				x, y = a, b
			}
		}
	}
	if x == "" {
		t.Fatal("every pair of gateways is linked with peersPerRegion 1")
	}
	for _, g := range append(slices.Clone(r0), r1...) {
		if g != x && g != y {
			w.ix.SetHealth(g, false)
		}
	}
	if !linked(x, y) || !linked(y, x) {
		t.Fatalf("%s and %s are the regions' only healthy gateways and have no link both ways", x, y)
	}
	w.checkInvariants(w.maps())
	for _, g := range append(slices.Clone(r0), r1...) {
		w.ix.SetHealth(g, true)
	}
	if linked(x, y) || linked(y, x) {
		t.Errorf("the spare link %s–%s outlived the failure", x, y)
	}
	w.checkInvariants(w.maps())
}
