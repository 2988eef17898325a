// Package topology owns who peers with whom and which prefixes each peer
// carries (ARCHITECTURE §5). It keeps an index of the mesh's nodes and turns
// every change into the few deltas it causes, addressed to audiences (all
// nodes of a cluster, the gateways of a region, one node, ...), so that a
// node joining a 5,000-node cluster costs one peer entry delivered 5,000
// times, not 5,000 recomputed maps. Map builds one node's full map on
// demand (a snapshot). It is pure: no I/O, no clock, no randomness.
//
// The rules, which keep every WireGuard hop symmetric:
//   - Inside a cluster: full mesh. A node's peer entry carries its overlay
//     address(es) and pod block(s); every node of the cluster and every
//     gateway of its region sees the same entry.
//   - A cluster's designated gateway (rendezvous hashing of the cluster over
//     the region's healthy gateways) carries the mesh supernets for the
//     cluster's nodes: traffic to other regions leaves, and returns, through
//     it.
//   - Traffic between two clusters of a region goes through the pair's
//     gateway (rendezvous hashing of the unordered pair), which both
//     clusters' nodes map the other cluster's prefixes to.
//   - Gateways peer with every node of their region, with the other gateways
//     of their region (overlay address only), and with every gateway of the
//     other regions, whose entry carries the prefixes of the clusters it is
//     designated for.
package topology

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/policy"
)

// States of a node.
const (
	StateActive      = "active"
	StateQuarantined = "quarantined"
)

// Node is what topology needs to know of an enrolled node.
type Node struct {
	Name      string
	Region    string
	Cluster   string // empty for gateways
	Role      string
	Class     string
	State     string
	PublicKey netmap.Key
	// OverlayIPv4/IPv6 are the node's overlay addresses.
	OverlayIPv4 netip.Addr
	OverlayIPv6 netip.Addr
	// PodIPv4/IPv6 are the node's pod blocks (nodes and operators).
	PodIPv4 netip.Prefix
	PodIPv6 netip.Prefix
	// Endpoint is where peers of the node's region reach it.
	Endpoint netip.AddrPort
	// PublicEndpoint is where gateways of other regions reach a gateway.
	PublicEndpoint netip.AddrPort
	// Labels are the node's labels over its cluster's and region's (policy
	// selectors match them).
	Labels map[string]string

	// refSets are the firewall sets the node's own firewall uses (set by
	// the index; audiences of set deltas).
	refSets []string
	// routing is the Routing last sent to the gateway; bgpMode marks a
	// gateway of a BIRD-mode region.
	routing *netmap.Routing
	bgpMode bool

	// Healthy is meaningful for gateways: only healthy gateways are
	// designated. (Last, beside bgpMode and member: one word for the
	// three.)
	Healthy bool
	// member is the node's index in its cluster's members (set by the
	// index).
	member int32
}

// RefSets returns the firewall sets the node's firewall uses.
func (n *Node) RefSets() []string { return n.refSets }

func (n *Node) endpoint() policy.Endpoint {
	return policy.Endpoint{Name: n.Name, Region: n.Region, Cluster: n.Cluster, Role: n.Role, Class: n.Class, Labels: n.Labels}
}

// IsGateway reports whether the node is a gateway.
func (n *Node) IsGateway() bool { return n.Role == netmap.RoleGateway }

func (n *Node) active() bool { return n.State == "" || n.State == StateActive }

// ownPrefixes are the node's overlay host routes and pod blocks.
func (n *Node) ownPrefixes() []netip.Prefix {
	var ps []netip.Prefix
	if n.OverlayIPv4.IsValid() {
		ps = append(ps, netip.PrefixFrom(n.OverlayIPv4, 32))
	}
	if n.OverlayIPv6.IsValid() {
		ps = append(ps, netip.PrefixFrom(n.OverlayIPv6, 128))
	}
	if n.PodIPv4.IsValid() {
		ps = append(ps, n.PodIPv4)
	}
	if n.PodIPv6.IsValid() {
		ps = append(ps, n.PodIPv6)
	}
	return ps
}

func (n *Node) hostPrefixes() []netip.Prefix {
	var ps []netip.Prefix
	if n.OverlayIPv4.IsValid() {
		ps = append(ps, netip.PrefixFrom(n.OverlayIPv4, 32))
	}
	if n.OverlayIPv6.IsValid() {
		ps = append(ps, netip.PrefixFrom(n.OverlayIPv6, 128))
	}
	return ps
}

// Options tune the maps.
type Options struct {
	// InterfaceName is the WireGuard interface on every node (default sm0).
	InterfaceName string
	// ListenPort is the WireGuard port (default 51820).
	ListenPort int
	// GatewayKeepalive is the keepalive nodes send their gateways, seconds
	// (default 25): it keeps NAT state and handshake ages fresh.
	GatewayKeepalive int
}

func (o *Options) setDefaults() {
	if o.InterfaceName == "" {
		o.InterfaceName = "sm0"
	}
	if o.ListenPort == 0 {
		o.ListenPort = 51820
	}
	if o.GatewayKeepalive == 0 {
		o.GatewayKeepalive = 25
	}
}

// Index is the mesh as topology sees it. It is not safe for concurrent
// use; the controller serializes mutations and reads.
type Index struct {
	opts   Options
	plan   *plan.Plan
	policy *policy.Policy
	// sets holds each firewall set's members: set → node → prefixes.
	sets     map[string]map[string][]netip.Prefix
	supernet []netip.Prefix // routed into the overlay on every node
	nodes    map[string]*Node
	clients  map[string]*Client
	clusters map[string]*cluster // key region/cluster
	regions  map[string]*region
}

type cluster struct {
	region, name string
	plan         *plan.Cluster
	// members are the cluster's nodes, in no order (a node knows its
	// index: removal swaps the last one in). A slice, not a map by name:
	// 8 bytes a node instead of ~40, at 1,000,000 nodes.
	members []*Node
	// gwView is the entry of each gateway of the region as this cluster's
	// nodes see it.
	gwView map[string]netmap.Peer
}

type region struct {
	name     string
	gateways []*Node // sorted by name
	clusters []string
	// remoteView is the entry of each of this region's gateways as the
	// gateways of other regions see it; localView as its own gateways do.
	remoteView map[string]netmap.Peer
	localView  map[string]netmap.Peer
	// clientsGW is the clients gateway the views were last computed with;
	// clientsPin the one the registry pinned (see clientsGateway).
	clientsGW, clientsPin string
}

// New returns an empty index over a plan.
func New(p *plan.Plan, opts Options) *Index {
	opts.setDefaults()
	ix := &Index{opts: opts, nodes: map[string]*Node{}, clients: map[string]*Client{}, sets: map[string]map[string][]netip.Prefix{}}
	ix.setPlan(p)
	return ix
}

func clusterKey(region, name string) string { return region + "/" + name }

func (ix *Index) setPlan(p *plan.Plan) {
	ix.plan = p
	ix.clusters = map[string]*cluster{}
	ix.regions = map[string]*region{}
	ix.supernet = nil
	if p == nil {
		return
	}
	a := p.Addressing
	ix.supernet = append(ix.supernet, a.OverlayIPv4)
	if a.OverlayIPv6.IsValid() {
		ix.supernet = append(ix.supernet, a.OverlayIPv6)
	}
	ix.supernet = append(ix.supernet, a.PodIPv4...)
	ix.supernet = append(ix.supernet, a.PodIPv6...)
	for ri := range p.Regions {
		pr := &p.Regions[ri]
		r := &region{name: pr.Name, remoteView: map[string]netmap.Peer{}, localView: map[string]netmap.Peer{}}
		ix.regions[pr.Name] = r
		for ci := range pr.Clusters {
			pc := &pr.Clusters[ci]
			r.clusters = append(r.clusters, pc.Name)
			ix.clusters[clusterKey(pr.Name, pc.Name)] = &cluster{region: pr.Name, name: pc.Name, plan: pc, gwView: map[string]netmap.Peer{}}
			// Pod CIDRs outside every supernet are routed too.
			for _, pp := range []netip.Prefix{pc.PodIPv4, pc.PodIPv6} {
				if pp.IsValid() && !slices.ContainsFunc(ix.supernet, func(s netip.Prefix) bool { return s.Bits() <= pp.Bits() && s.Contains(pp.Addr()) }) {
					ix.supernet = append(ix.supernet, pp)
				}
			}
		}
		slices.Sort(r.clusters)
	}
	ix.supernet = netmap.SortPrefixes(ix.supernet)
}

// Plan returns the plan the index was built over.
func (ix *Index) Plan() *plan.Plan { return ix.plan }

// Node returns a node by name.
func (ix *Index) Node(name string) (*Node, bool) {
	n, ok := ix.nodes[name]
	return n, ok
}

// Len returns the number of nodes.
func (ix *Index) Len() int { return len(ix.nodes) }

// Nodes calls fn for every node in name order.
func (ix *Index) Nodes(fn func(*Node)) {
	names := make([]string, 0, len(ix.nodes))
	for n := range ix.nodes {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fn(ix.nodes[n])
	}
}

func sortPeers(ps []netmap.Peer) []netmap.Peer {
	slices.SortFunc(ps, func(a, b netmap.Peer) int { return cmp.Compare(a.Name, b.Name) })
	return ps
}
