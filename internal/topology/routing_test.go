package topology

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
)

func TestBackboneLinksAreSymmetric(t *testing.T) {
	w := newWorldWith(t, 3, 3, 2, "routing: {bgp: true, bfd: {interval: 200ms, multiplier: 4}}\n")
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
