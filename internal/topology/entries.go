package topology

import (
	"hash/fnv"
	"net/netip"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
)

// score is the rendezvous (highest-random-weight) score of a gateway for a
// key: the gateway with the highest score wins, so removing one gateway
// moves only the keys it had.
func score(key, gateway string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(gateway))
	x := h.Sum64()
	// splitmix64 finalizer: FNV alone mixes short keys poorly.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Rendezvous returns the name of the gateway that wins key among names, or
// "" when names is empty.
func Rendezvous(key string, names []string) string {
	best, bestScore := "", uint64(0)
	for _, n := range names {
		if s := score(key, n); best == "" || s > bestScore || (s == bestScore && n < best) {
			best, bestScore = n, s
		}
	}
	return best
}

// candidates are the gateways designation may choose: the healthy active
// ones, or every active one when none is healthy (best effort beats none).
func (r *region) candidates() []string {
	var healthy, all []string
	for _, g := range r.gateways {
		if !g.active() {
			continue
		}
		all = append(all, g.Name)
		if g.Healthy {
			healthy = append(healthy, g.Name)
		}
	}
	if len(healthy) > 0 {
		return healthy
	}
	return all
}

func pairKey(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return "pair:" + a + "|" + b
}

// designated returns the designated gateway of a cluster.
func (r *region) designated(clusterName string) string {
	return Rendezvous("cluster:"+clusterName, r.candidates())
}

// pair returns the gateway carrying traffic between two clusters.
func (r *region) pair(a, b string) string { return Rendezvous(pairKey(a, b), r.candidates()) }

func clusterPrefixes(pc *plan.Cluster) []netip.Prefix {
	var ps []netip.Prefix
	for _, p := range []netip.Prefix{pc.OverlayIPv4, pc.OverlayIPv6, pc.PodIPv4, pc.PodIPv6} {
		if p.IsValid() {
			ps = append(ps, p)
		}
	}
	return ps
}

// nodeEntry is a node (or operator) as every peer sees it.
func nodeEntry(n *Node) netmap.Peer {
	return netmap.Peer{
		Name: n.Name, PublicKey: n.PublicKey, Endpoint: n.Endpoint,
		AllowedIPs: netmap.SortPrefixes(n.ownPrefixes()),
		Role:       n.Role, Region: n.Region, Cluster: n.Cluster,
	}
}

// nodeEntryForGateways is a node as its region's gateways see it: with a
// keepalive, so a gateway that restarts re-establishes its sessions at
// once instead of waiting for WireGuard's dead-peer detection (~15 s).
func (ix *Index) nodeEntryForGateways(n *Node) netmap.Peer {
	p := nodeEntry(n)
	p.PersistentKeepalive = ix.opts.GatewayKeepalive
	return p
}

// gatewayForCluster is gateway g as the nodes of cluster c see it.
func (ix *Index) gatewayForCluster(r *region, g *Node, c *cluster) netmap.Peer {
	allowed := g.hostPrefixes()
	if g.active() {
		if r.clientsGateway() == g.Name {
			allowed = append(allowed, ix.clientRanges(r.name)...)
		}
		if r.designated(c.name) == g.Name {
			allowed = append(allowed, ix.supernet...)
		}
		for _, other := range r.clusters {
			if other != c.name && r.pair(c.name, other) == g.Name {
				allowed = append(allowed, clusterPrefixes(ix.clusters[clusterKey(r.name, other)].plan)...)
			}
		}
	}
	return netmap.Peer{
		Name: g.Name, PublicKey: g.PublicKey, Endpoint: g.Endpoint,
		AllowedIPs:          netmap.SortPrefixes(allowed),
		PersistentKeepalive: ix.opts.GatewayKeepalive,
		Role:                g.Role, Region: g.Region,
	}
}

// gatewayLocal is gateway g as the other gateways of its region see it.
func (ix *Index) gatewayLocal(g *Node) netmap.Peer {
	allowed := g.hostPrefixes()
	if r := ix.regions[g.Region]; g.active() && r.clientsGateway() == g.Name {
		allowed = append(allowed, ix.clientRanges(r.name)...)
	}
	return netmap.Peer{
		Name: g.Name, PublicKey: g.PublicKey, Endpoint: g.Endpoint,
		AllowedIPs:          netmap.SortPrefixes(allowed),
		PersistentKeepalive: ix.opts.GatewayKeepalive,
		Role:                g.Role, Region: g.Region,
	}
}

// gatewayRemote is gateway g as the gateways of other regions see it: it
// carries the prefixes of the clusters it is designated for.
func (ix *Index) gatewayRemote(r *region, g *Node) netmap.Peer {
	allowed := g.hostPrefixes()
	if g.active() {
		if r.clientsGateway() == g.Name {
			allowed = append(allowed, ix.clientRanges(r.name)...)
		}
		for _, cn := range r.clusters {
			if r.designated(cn) == g.Name {
				allowed = append(allowed, clusterPrefixes(ix.clusters[clusterKey(r.name, cn)].plan)...)
			}
		}
	}
	ep := g.PublicEndpoint
	if !ep.IsValid() {
		ep = g.Endpoint
	}
	return netmap.Peer{
		Name: g.Name, PublicKey: g.PublicKey, Endpoint: ep,
		AllowedIPs:          netmap.SortPrefixes(allowed),
		PersistentKeepalive: ix.opts.GatewayKeepalive,
		Role:                g.Role, Region: g.Region,
	}
}

// Designation lists, for one region, each cluster's designated gateway.
func (ix *Index) Designation(regionName string) map[string]string {
	r, ok := ix.regions[regionName]
	if !ok {
		return nil
	}
	out := map[string]string{}
	for _, c := range r.clusters {
		out[c] = r.designated(c)
	}
	return out
}

// Gateways returns the names of a region's gateways, sorted.
func (ix *Index) Gateways(regionName string) []string {
	r, ok := ix.regions[regionName]
	if !ok {
		return nil
	}
	out := make([]string, len(r.gateways))
	for i, g := range r.gateways {
		out[i] = g.Name
	}
	return out
}
