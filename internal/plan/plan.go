// Package plan owns address and capacity planning: from a validated mesh
// spec (and optionally the previous plan) it computes, deterministically,
// the overlay blocks of every region and cluster, gateway addresses, pod
// CIDRs, Cilium cluster IDs, utilization and the MTU of every layer. It is
// pure: no I/O, no clock, no randomness.
//
// Stability rule: given the previous plan, adding a region or a cluster
// never moves an existing allocation, and removing one frees only its own
// ranges. Allocations are keyed by name and kept in the plan (slots, pod
// CIDRs, cluster IDs), so the previous plan is the allocator's state.
package plan

import (
	"net/netip"
)

// Slot layout of the overlay (ARCHITECTURE §4): a region takes RegionBits
// more than the overlay supernet, a cluster ClusterBits more than its
// region. Slot 0 of every region is its infrastructure block (gateways,
// external clients); clusters use slots 1..2^ClusterBits-1.
const (
	RegionBits  = 5 // 32 region slots ≥ 20 regions
	ClusterBits = 4 // 16 slots: infra + up to 15 clusters ≥ 10
	// GatewaySlots is how many addresses the infra block reserves for
	// gateways (offsets 1..GatewaySlots).
	GatewaySlots = 32
)

// Plan is the computed address and MTU plan of a mesh.
type Plan struct {
	Mesh       string        `json:"mesh"`
	Addressing Addressing    `json:"addressing"`
	Regions    []Region      `json:"regions"`
	Usage      []Utilization `json:"utilization"`
	Warnings   []string      `json:"warnings,omitempty"`
	// Dataplane is the spec's dataplane.firewall (ebpf, nftables, auto;
	// empty: each agent's flag decides), passed to every node's map.
	Dataplane string `json:"dataplane,omitempty"`
}

// Addressing echoes the supernets the plan was made from.
type Addressing struct {
	OverlayIPv4 netip.Prefix   `json:"overlayIPv4"`
	OverlayIPv6 netip.Prefix   `json:"overlayIPv6,omitzero"`
	PodIPv4     []netip.Prefix `json:"podIPv4,omitempty"`
	PodIPv6     []netip.Prefix `json:"podIPv6,omitempty"`
	// RegionPrefixLen and ClusterPrefixLen are the IPv4 overlay block sizes.
	RegionPrefixLen  int `json:"regionPrefixLen"`
	ClusterPrefixLen int `json:"clusterPrefixLen"`
}

// Region is the plan of one region.
type Region struct {
	Name string `json:"name"`
	// Slot is the region's index in the overlay supernet.
	Slot        int          `json:"slot"`
	OverlayIPv4 netip.Prefix `json:"overlayIPv4"`
	OverlayIPv6 netip.Prefix `json:"overlayIPv6,omitzero"`
	// InfraIPv4 is slot 0 of the region: gateways, then external clients.
	InfraIPv4 netip.Prefix `json:"infraIPv4"`
	InfraIPv6 netip.Prefix `json:"infraIPv6,omitzero"`
	// ClientsIPv4 is the part of the infra block for external clients.
	ClientsIPv4 netip.Prefix `json:"clientsIPv4"`
	ClientsIPv6 netip.Prefix `json:"clientsIPv6,omitzero"`
	Gateways    []Gateway    `json:"gateways"`
	MTU         []RoleMTU    `json:"mtu"`
	Clusters    []Cluster    `json:"clusters"`
	// BGP is set when the region runs BIRD mode.
	BGP *RegionBGP `json:"bgp,omitempty"`
}

// RegionBGP is a region's dynamic routing: its AS number, the BFD timers
// of every session, and the operator's routers to announce to.
type RegionBGP struct {
	ASN           uint32 `json:"asn"`
	BFDIntervalMs int    `json:"bfdIntervalMs"`
	BFDMultiplier int    `json:"bfdMultiplier"`
	// PeersPerRegion is how many gateways of each other region each of
	// the region's gateways links to (routing.backbone.peersPerRegion).
	PeersPerRegion int            `json:"peersPerRegion,omitempty"`
	ExternalPeers  []ExternalPeer `json:"externalPeers,omitempty"`
}

// ExternalPeer is an operator's BGP router.
type ExternalPeer struct {
	Name     string     `json:"name"`
	Address  netip.Addr `json:"address"`
	ASN      uint32     `json:"asn"`
	Password string     `json:"password,omitempty"`
	BFD      bool       `json:"bfd,omitempty"`
	Multihop int        `json:"multihop,omitempty"`
}

// Gateway is a planned gateway address.
type Gateway struct {
	Index       int        `json:"index"`
	OverlayIPv4 netip.Addr `json:"overlayIPv4"`
	OverlayIPv6 netip.Addr `json:"overlayIPv6,omitzero"`
}

// RoleMTU is the MTU line of one node role in a region.
type RoleMTU struct {
	Role           string `json:"role"`
	UnderlayMTU    int    `json:"underlayMTU"`
	UnderlayFamily string `json:"underlayFamily"`
	// WireGuardOverhead is the per-packet cost on this role's underlay.
	WireGuardOverhead int `json:"wireguardOverhead"`
	// WireGuardMTU is the MTU of the role's WireGuard interface: the
	// smallest MTU left on any path its traffic takes.
	WireGuardMTU int `json:"wireguardMTU"`
	// LimitedBy names the hop that sets WireGuardMTU.
	LimitedBy string `json:"limitedBy"`
}

// Cluster is the plan of one cluster.
type Cluster struct {
	Name       string `json:"name"`
	Region     string `json:"region"`
	Slot       int    `json:"slot"`
	ClusterID  int    `json:"clusterID"`
	CiliumName string `json:"ciliumName"`

	OverlayIPv4 netip.Prefix `json:"overlayIPv4"`
	OverlayIPv6 netip.Prefix `json:"overlayIPv6,omitzero"`
	PodIPv4     netip.Prefix `json:"podIPv4,omitzero"`
	PodIPv6     netip.Prefix `json:"podIPv6,omitzero"`
	// NodeMaskIPv4/IPv6 is the prefix length of each node's pod block.
	NodeMaskIPv4 int `json:"nodeMaskIPv4,omitempty"`
	NodeMaskIPv6 int `json:"nodeMaskIPv6,omitempty"`

	MaxNodes       int `json:"maxNodes"`
	MaxPods        int `json:"maxPods"`
	MaxPodsPerNode int `json:"maxPodsPerNode"`
	// PodMTU is the MTU Cilium and pods use in this cluster.
	PodMTU int `json:"podMTU"`
	// OperatorPodMTU is the pod MTU on operator nodes, when it differs.
	OperatorPodMTU int `json:"operatorPodMTU,omitempty"`
	// Encapsulation is Cilium's routing mode for this cluster.
	Encapsulation string `json:"encapsulation"`
}

// Utilization is how much of a range the plan uses.
type Utilization struct {
	Range  string `json:"range"`
	Prefix string `json:"prefix"`
	// Used and Total are address counts (as decimal strings, IPv6 counts
	// exceed 64 bits); Percent is rounded to 0.01.
	Used    string  `json:"used"`
	Total   string  `json:"total"`
	Percent float64 `json:"percent"`
}

// Region returns the region plan with the given name.
func (p *Plan) Region(name string) (*Region, bool) {
	for i := range p.Regions {
		if p.Regions[i].Name == name {
			return &p.Regions[i], true
		}
	}
	return nil, false
}

// Cluster returns the plan of region/cluster.
func (p *Plan) Cluster(region, cluster string) (*Cluster, bool) {
	r, ok := p.Region(region)
	if !ok {
		return nil, false
	}
	for i := range r.Clusters {
		if r.Clusters[i].Name == cluster {
			return &r.Clusters[i], true
		}
	}
	return nil, false
}

// Role returns the MTU line of a role.
func (r *Region) Role(role string) (RoleMTU, bool) {
	for _, m := range r.MTU {
		if m.Role == role {
			return m, true
		}
	}
	return RoleMTU{}, false
}

// NodeAddresses returns the addresses of address slot n of a cluster: the
// (n+1)-th overlay address(es) of its block and its n-th pod block(s).
func (c *Cluster) NodeAddresses(n int) (v4, v6 netip.Addr, pod4, pod6 netip.Prefix) {
	v4 = addrAt(c.OverlayIPv4, uint64(1+n))
	if c.OverlayIPv6.IsValid() {
		v6 = addrAt(c.OverlayIPv6, uint64(1+n))
	}
	if c.PodIPv4.IsValid() {
		pod4 = nth(c.PodIPv4, c.NodeMaskIPv4, uint64(n))
	}
	if c.PodIPv6.IsValid() {
		pod6 = nth(c.PodIPv6, c.NodeMaskIPv6, uint64(n))
	}
	return v4, v6, pod4, pod6
}

// Slots is how many node address slots a cluster has: its maxNodes.
func (c *Cluster) Slots() int { return c.MaxNodes }
