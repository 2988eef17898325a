package topology

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
)

// Backbone addressing (BIRD mode). A gateway's global number is its
// region's slot × 32 + its index among the region's planned gateways
// (< 1024). The link between gateways a and b uses the /31 number a XOR b
// of BackboneRange (unique among the links of either end; the lower
// number takes the even address) and, on each end, the UDP port
// BackbonePortBase + the other end's number.
var BackboneRange = netip.MustParsePrefix("169.254.64.0/21")

// BackbonePortBase is the first UDP port of backbone links.
const BackbonePortBase = 52000

// BackbonePorts is the range of backbone link ports (for firewalls).
const BackbonePorts = 1024

// gatewayNumber is g's global number, or -1 when its address is not in
// its region's gateway slots (offsets 1..GatewaySlots of the infra block).
func (ix *Index) gatewayNumber(g *Node) int {
	pr, ok := ix.plan.Region(g.Region)
	if !ok || !g.OverlayIPv4.Is4() || !pr.InfraIPv4.Contains(g.OverlayIPv4) {
		return -1
	}
	base, a := pr.InfraIPv4.Addr().As4(), g.OverlayIPv4.As4()
	off := (int(a[0])<<24 | int(a[1])<<16 | int(a[2])<<8 | int(a[3])) - (int(base[0])<<24 | int(base[1])<<16 | int(base[2])<<8 | int(base[3]))
	if off < 1 || off > plan.GatewaySlots {
		return -1
	}
	return pr.Slot*plan.GatewaySlots + off - 1
}

// linkAddrs returns the /31 of the link between gateway numbers a and b
// as seen from a: a's address (with /31) and b's.
func linkAddrs(a, b int) (netip.Prefix, netip.Addr) {
	base := BackboneRange.Addr().As4()
	off := uint32(a^b) * 2
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	lo := v + off
	mk := func(x uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
	}
	mine, theirs := mk(lo), mk(lo+1)
	if a > b {
		mine, theirs = theirs, mine
	}
	return netip.PrefixFrom(mine, 31), theirs
}

// backboneLinked reports whether gateways a and b (their global numbers)
// have a backbone link. Gateways of one region always do (iBGP). Between
// two regions the one with more planned gateways is L (the lower slot on
// a tie), the other S, and L's gateway i links S's gateways r+i, r+i+1,
// …, r+i+K−1 (mod S's gateway count; r the sum of the two regions'
// slots), K the smaller of the two regions'
// peers per region: each gateway of L has min(K, n_S) links into S, each
// gateway of S about K·n_L/n_S into L (exactly K when the regions are the
// same size), and every gateway of either has at least one into the
// other. The relation is symmetric, so both ends plan the same links.
// pa and pb are the gateways' regions' plans.
func backboneLinked(pa, pb *plan.Region, a, b int) bool {
	ra, rb := a/plan.GatewaySlots, b/plan.GatewaySlots
	if ra == rb {
		return true
	}
	if pa == nil || pb == nil || pa.BGP == nil || pb.BGP == nil {
		return false
	}
	k := min(pa.BGP.PeersPerRegion, pb.BGP.PeersPerRegion)
	if k <= 0 { // a plan from before the field: the full mesh it planned
		return true
	}
	ia, ib := a%plan.GatewaySlots, b%plan.GatewaySlots
	na, nb := len(pa.Gateways), len(pb.Gateways)
	// Orient: l is the larger region (lower slot on a tie).
	il, is, ns := ia, ib, nb
	if nb > na || nb == na && rb < ra {
		il, is, ns = ib, ia, na
	}
	if ns == 0 {
		return false
	}
	// Rotated by the pair's slots, so gateway i is not linked to gateway
	// i of every region (and a region's first gateways do not carry
	// every region pair's first links).
	return ((is-il-ra-rb)%ns+ns)%ns < k
}

// spareLink returns the extra link between regions a and b (a's gateway,
// b's gateway) when no planned link joins a healthy gateway of a with a
// healthy gateway of b (a region without one: any of its gateways, as
// the designation does) — the gateways a planned link would join are dead
// or not registered, e.g. gateway 1 of one region and gateway 2 of the
// other with peersPerRegion 1 — so BGP could not carry traffic between
// the regions although both have healthy gateways: it joins the healthy
// gateways with the lowest numbers. Such a link exists only while it is
// needed (it is built after the failure, so traffic between the two
// regions waits for its handshake and BGP session); none otherwise.
func (ix *Index) spareLink(a, b *region, pa, pb *plan.Region) [2]string {
	if a == b || pa == nil || pb == nil || pa.BGP == nil || pb.BGP == nil {
		return [2]string{}
	}
	type gw struct {
		name string
		n    int
	}
	live := func(r *region) []gw {
		var out []gw
		for _, name := range r.candidates() { // healthy ones, else every one
			if n := ix.gatewayNumber(ix.nodes[name]); n >= 0 {
				out = append(out, gw{name, n})
			}
		}
		slices.SortFunc(out, func(x, y gw) int { return x.n - y.n })
		return out
	}
	la, lb := live(a), live(b)
	if len(la) == 0 || len(lb) == 0 {
		return [2]string{}
	}
	for _, x := range la {
		for _, y := range lb {
			if backboneLinked(pa, pb, x.n, y.n) {
				return [2]string{}
			}
		}
	}
	return [2]string{la[0].name, lb[0].name}
}

// bgp returns the region's BIRD-mode settings, or nil in baseline mode.
func (ix *Index) bgp(region string) *plan.RegionBGP {
	if pr, ok := ix.plan.Region(region); ok {
		return pr.BGP
	}
	return nil
}

// dynamicPair reports whether traffic between two regions is routed by
// BIRD (both run it); then their gateways do not peer on the mesh
// interface but over backbone links.
func (ix *Index) dynamicPair(a, b string) bool { return ix.bgp(a) != nil && ix.bgp(b) != nil }

// regionPrefixes are every prefix a region's gateways may announce: its
// clusters, its active gateways' own addresses and its clients range.
func (ix *Index) regionPrefixes(r *region) []netip.Prefix {
	var out []netip.Prefix
	for _, cn := range r.clusters {
		out = append(out, clusterPrefixes(ix.clusters[clusterKey(r.name, cn)].plan)...)
	}
	for _, g := range r.gateways {
		if g.active() {
			out = append(out, g.hostPrefixes()...)
		}
	}
	out = append(out, ix.clientRanges(r.name)...)
	return netmap.SortPrefixes(out)
}

// routing builds gateway g's Routing, or nil when its region is not in
// BIRD mode.
func (ix *Index) routing(g *Node) *netmap.Routing {
	b := ix.bgp(g.Region)
	me := ix.gatewayNumber(g)
	if b == nil || me < 0 || !g.active() {
		return nil
	}
	r := ix.regions[g.Region]
	rt := &netmap.Routing{ASN: b.ASN, RouterID: g.OverlayIPv4, RouterIPv6: g.OverlayIPv6, BFDIntervalMs: b.BFDIntervalMs, BFDMultiplier: b.BFDMultiplier,
		Local: ix.regionPrefixes(r)}
	for _, cn := range r.clusters {
		if r.designated(cn) == g.Name {
			rt.Originate = append(rt.Originate, clusterPrefixes(ix.clusters[clusterKey(r.name, cn)].plan)...)
		}
	}
	// Its own addresses, and the clients range when it serves the clients.
	rt.Originate = append(rt.Originate, g.hostPrefixes()...)
	if r.clientsGateway() == g.Name {
		rt.Originate = append(rt.Originate, ix.clientRanges(r.name)...)
	}
	rt.Originate = netmap.SortPrefixes(rt.Originate)
	for _, x := range b.ExternalPeers {
		rt.External = append(rt.External, netmap.ExternalPeer{Name: x.Name, Address: x.Address, ASN: x.ASN, Password: x.Password, BFD: x.BFD, Multihop: x.Multihop})
	}
	mtu := ix.mtu(g)
	mine, _ := ix.plan.Region(g.Region)
	for _, other := range ix.regions {
		ob := ix.bgp(other.name)
		if ob == nil {
			continue
		}
		theirs, _ := ix.plan.Region(other.name)
		spare := ix.spareLink(r, other, mine, theirs)
		if other.name != g.Region {
			rt.Accept = append(rt.Accept, netmap.RegionPrefixes{Region: other.name, ASN: ob.ASN, Prefixes: ix.regionPrefixes(other)})
		}
		for _, peer := range other.gateways {
			n := ix.gatewayNumber(peer)
			if peer.Name == g.Name || !peer.active() || n < 0 || !backboneLinked(mine, theirs, me, n) && spare != [2]string{g.Name, peer.Name} {
				continue
			}
			ep := peer.Endpoint
			if other.name != g.Region && peer.PublicEndpoint.IsValid() {
				ep = peer.PublicEndpoint
			}
			addr, peerAddr := linkAddrs(me, n)
			rt.Links = append(rt.Links, netmap.BackboneLink{
				Interface: fmt.Sprintf("smbb%d", n), ListenPort: BackbonePortBase + n,
				Address: addr, PeerAddress: peerAddr,
				Peer: peer.Name, PeerRegion: other.name, PeerASN: ob.ASN, PublicKey: peer.PublicKey,
				Endpoint: netip.AddrPortFrom(ep.Addr(), uint16(BackbonePortBase+me)), MTU: mtu,
			})
		}
	}
	slices.SortFunc(rt.Links, func(a, b netmap.BackboneLink) int { return strings.Compare(a.Interface, b.Interface) })
	slices.SortFunc(rt.Accept, func(a, b netmap.RegionPrefixes) int { return strings.Compare(a.Region, b.Region) })
	return rt
}

// routingChanges resyncs the BIRD-mode gateways whose Routing changed
// (designation, gateways joining or leaving): gateways are few, and a
// changed routing rewrites their BIRD configuration anyway.
func (ix *Index) routingChanges() []Change {
	var changes []Change
	for _, r := range ix.regions {
		if ix.bgp(r.name) == nil {
			continue
		}
		for _, g := range r.gateways {
			rt := ix.routing(g)
			if !rt.Equal(g.routing) {
				g.routing = rt
				changes = append(changes, resyncNode(g.Name))
			}
		}
	}
	return changes
}
