package topology

import (
	"net/netip"

	"github.com/statemesh/statemesh/internal/netmap"
)

// Map builds the full map of one node (a snapshot). Work: the node's peers.
func (ix *Index) Map(name string) (netmap.Map, bool) {
	n, ok := ix.nodes[name]
	if !ok {
		return netmap.Map{}, false
	}
	m := netmap.Map{
		Self: netmap.Self{Name: n.Name, Region: n.Region, Cluster: n.Cluster, Role: n.Role, Class: n.Class, Dataplane: ix.plan.Dataplane},
		Interface: netmap.Interface{
			Name:       ix.opts.InterfaceName,
			Addresses:  netmap.SortPrefixes(n.hostPrefixes()),
			ListenPort: ix.opts.ListenPort,
			MTU:        ix.mtu(n),
		},
		Forwarding: n.IsGateway(),
	}
	for _, p := range []netip.Prefix{n.PodIPv4, n.PodIPv6} {
		if p.IsValid() {
			m.Self.PodPrefixes = append(m.Self.PodPrefixes, p)
		}
	}
	if !n.active() {
		// A quarantined node keeps its interface but has no peers and no
		// routes: it is cut off from the mesh. Under a policy its firewall
		// admits nothing.
		if ix.policy != nil {
			m.Firewall = &netmap.Firewall{Sets: map[string][]netip.Prefix{}}
		}
		return m.Normalize(), true
	}
	m.Firewall = ix.firewall(n)
	m.Routes = append([]netip.Prefix(nil), ix.supernet...)
	r := ix.regions[n.Region]
	if n.IsGateway() {
		for _, rn := range ix.regionNodes(n.Region) {
			m.Peers = append(m.Peers, ix.nodeEntryForGateways(rn))
		}
		for name, p := range r.localView {
			if name != n.Name {
				m.Peers = append(m.Peers, p)
			}
		}
		if r.clientsGateway() == n.Name {
			m.Peers = append(m.Peers, ix.clientPeers(n.Region)...)
		}
		for _, other := range ix.regions {
			if other.name == n.Region || ix.dynamicPair(n.Region, other.name) {
				continue // BIRD mode: over backbone links
			}
			for _, p := range other.remoteView {
				m.Peers = append(m.Peers, p)
			}
		}
		m.Routing = ix.routing(n)
	} else {
		c := ix.clusters[clusterKey(n.Region, n.Cluster)]
		for _, peer := range c.members {
			if peer.Name != n.Name && peer.active() {
				m.Peers = append(m.Peers, nodeEntry(peer))
			}
		}
		for _, p := range c.gwView {
			m.Peers = append(m.Peers, p)
		}
	}
	sortPeers(m.Peers)
	m.Self.PodPrefixes = netmap.SortPrefixes(m.Self.PodPrefixes)
	return m, true
}

// regionNodes lists the active non-gateway nodes of a region.
func (ix *Index) regionNodes(region string) []*Node {
	var out []*Node
	r := ix.regions[region]
	for _, cn := range r.clusters {
		for _, n := range ix.clusters[clusterKey(region, cn)].members {
			if n.active() {
				out = append(out, n)
			}
		}
	}
	return out
}

// mtu is the planned WireGuard MTU of the node's role in its region.
func (ix *Index) mtu(n *Node) int {
	if pr, ok := ix.plan.Region(n.Region); ok {
		if l, ok := pr.Role(n.Role); ok {
			return l.WireGuardMTU
		}
	}
	return 1420
}

// firewall builds a node's firewall from the policy and the sets' members.
func (ix *Index) firewall(n *Node) *netmap.Firewall {
	if ix.policy == nil {
		return nil
	}
	fw := &netmap.Firewall{Sets: map[string][]netip.Prefix{}}
	pf := ix.policy.FirewallFor(n.endpoint())
	for _, r := range pf.Rules {
		fr := netmap.FirewallRule{Comment: r.Comment, Set: r.Set}
		for _, p := range r.Ports {
			fr.Ports = append(fr.Ports, netmap.PortRange{Proto: p.Proto, From: p.From, To: p.To})
		}
		fw.Rules = append(fw.Rules, fr)
	}
	for _, s := range pf.Sets() {
		var ps []netip.Prefix
		for _, members := range ix.sets[s] {
			ps = append(ps, members...)
		}
		fw.Sets[s] = netmap.SortPrefixes(ps)
	}
	return fw
}
