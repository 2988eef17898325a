// Package netmap owns the per-node desired state that the controller computes
// and the agent applies: the WireGuard interface, its peers, the routes that
// point into it, and whether the node forwards. A Map is a value: it is never
// mutated in place, and two maps are compared with Equal or Diff.
//
// Invariants a newcomer must not break:
//   - Peers are sorted by Name and names are unique within a map.
//   - Every prefix list (AllowedIPs, Routes, Addresses) is sorted and
//     deduplicated (see SortPrefixes), so that equal maps compare equal.
//   - A prefix appears in the AllowedIPs of at most one peer: WireGuard maps
//     each prefix to exactly one peer per interface.
package netmap

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Roles of a node in the mesh.
const (
	RoleNode     = "node"
	RoleOperator = "operator"
	// RoleHost is a Netmaker host: netclient manages its WireGuard;
	// StateMesh only attests it (its netclient key) and is never its peer.
	RoleHost    = "host"
	RoleGateway = "gateway"
)

// Security classes of a node.
const (
	ClassStrong = "strong"
	ClassWeak   = "weak"
)

// Map is the desired network state of one node at one revision.
type Map struct {
	// Revision is the store revision this map reflects.
	Revision int64 `json:"revision"`
	// Self describes the node the map is for.
	Self Self `json:"self"`
	// Interface is the node's WireGuard interface.
	Interface Interface `json:"interface"`
	// Peers are the WireGuard peers, sorted by Name.
	Peers []Peer `json:"peers"`
	// Routes are the destinations routed into the WireGuard interface.
	Routes []netip.Prefix `json:"routes"`
	// Forwarding is true when the node must forward IP packets (gateways).
	Forwarding bool `json:"forwarding"`
	// Firewall is the node's inbound overlay policy (nil: no policy).
	Firewall *Firewall `json:"firewall,omitempty"`
	// Routing is set on gateways in BIRD mode.
	Routing *Routing `json:"routing,omitempty"`
}

// Self is the identity and placement of the node a map is for.
type Self struct {
	Name    string `json:"name"`
	Region  string `json:"region"`
	Cluster string `json:"cluster,omitempty"`
	Role    string `json:"role"`
	Class   string `json:"class"`
	// PodPrefixes are the node's pod blocks (IPv4 and/or IPv6).
	PodPrefixes []netip.Prefix `json:"podPrefixes,omitempty"`
	// Dataplane is the spec's choice of enforcement (dataplane.firewall:
	// ebpf, nftables or auto; empty: the agent's own flag decides).
	Dataplane string `json:"dataplane,omitempty"`
}

// Interface is the desired configuration of the WireGuard interface.
type Interface struct {
	Name       string         `json:"name"`
	Addresses  []netip.Prefix `json:"addresses"`
	MTU        int            `json:"mtu"`
	ListenPort int            `json:"listenPort"`
}

// Peer is one WireGuard peer.
type Peer struct {
	Name      string `json:"name"`
	PublicKey Key    `json:"publicKey"`
	// Endpoint is where to send the first handshake; the zero value means
	// the peer has no known endpoint and will be learned by roaming.
	Endpoint   netip.AddrPort `json:"endpoint,omitzero"`
	AllowedIPs []netip.Prefix `json:"allowedIPs"`
	// PersistentKeepalive in seconds; 0 disables it.
	PersistentKeepalive int    `json:"persistentKeepalive,omitempty"`
	Role                string `json:"role,omitempty"`
	Region              string `json:"region,omitempty"`
	Cluster             string `json:"cluster,omitempty"`
}

// SortPrefixes sorts and deduplicates a prefix list in place and returns it,
// masking each prefix to its network address.
func SortPrefixes(ps []netip.Prefix) []netip.Prefix {
	for i, p := range ps {
		ps[i] = p.Masked()
	}
	slices.SortFunc(ps, ComparePrefix)
	return slices.Compact(ps)
}

// ComparePrefix orders prefixes by address family, address, then length.
func ComparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// Equal reports whether two peers are identical.
func (p Peer) Equal(o Peer) bool {
	return p.Name == o.Name && p.PublicKey == o.PublicKey && p.Endpoint == o.Endpoint &&
		slices.Equal(p.AllowedIPs, o.AllowedIPs) && p.PersistentKeepalive == o.PersistentKeepalive &&
		p.Role == o.Role && p.Region == o.Region && p.Cluster == o.Cluster
}

// Equal reports whether two interface configurations are identical.
func (i Interface) Equal(o Interface) bool {
	return i.Name == o.Name && slices.Equal(i.Addresses, o.Addresses) && i.MTU == o.MTU && i.ListenPort == o.ListenPort
}

// Equal reports whether two self descriptions are identical.
func (s Self) Equal(o Self) bool {
	return s.Name == o.Name && s.Region == o.Region && s.Cluster == o.Cluster && s.Role == o.Role &&
		s.Class == o.Class && slices.Equal(s.PodPrefixes, o.PodPrefixes) && s.Dataplane == o.Dataplane
}

// Equal reports whether two maps describe the same desired state. The
// revision is not compared.
func (m Map) Equal(o Map) bool {
	return m.Self.Equal(o.Self) && m.Interface.Equal(o.Interface) &&
		slices.EqualFunc(m.Peers, o.Peers, Peer.Equal) &&
		slices.Equal(m.Routes, o.Routes) && m.Forwarding == o.Forwarding && m.Firewall.Equal(o.Firewall) && m.Routing.Equal(o.Routing)
}

// Peer returns the peer with the given name.
func (m Map) Peer(name string) (Peer, bool) {
	i, ok := slices.BinarySearchFunc(m.Peers, name, func(p Peer, n string) int { return cmp.Compare(p.Name, n) })
	if !ok {
		return Peer{}, false
	}
	return m.Peers[i], true
}

// Normalize sorts every list of the map so that equal states compare equal.
// It returns the map for chaining; the slices are sorted in place.
func (m Map) Normalize() Map {
	m.Interface.Addresses = SortPrefixes(m.Interface.Addresses)
	m.Self.PodPrefixes = SortPrefixes(m.Self.PodPrefixes)
	for i := range m.Peers {
		m.Peers[i].AllowedIPs = SortPrefixes(m.Peers[i].AllowedIPs)
	}
	slices.SortFunc(m.Peers, func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	m.Routes = SortPrefixes(m.Routes)
	return m
}

// Clone returns a deep copy of the map.
func (m Map) Clone() Map {
	c := m
	c.Self.PodPrefixes = slices.Clone(m.Self.PodPrefixes)
	c.Interface.Addresses = slices.Clone(m.Interface.Addresses)
	c.Routes = slices.Clone(m.Routes)
	c.Firewall = m.Firewall.Clone()
	c.Peers = make([]Peer, len(m.Peers))
	for i, p := range m.Peers {
		p.AllowedIPs = slices.Clone(p.AllowedIPs)
		c.Peers[i] = p
	}
	return c
}

// Validate checks the invariants a map from outside (a saved file) must
// hold before it is applied: unique peer names and keys, a prefix on at
// most one peer, valid prefixes, an interface name of at most 15 bytes.
func (m Map) Validate() error {
	if m.Self.Name == "" || m.Interface.Name == "" || len(m.Interface.Name) > 15 {
		return fmt.Errorf("not a network map (self %q, interface %q)", m.Self.Name, m.Interface.Name)
	}
	names := map[string]bool{}
	keys := map[Key]bool{}
	owner := map[netip.Prefix]string{}
	for _, p := range m.Peers {
		if p.Name == "" || names[p.Name] {
			return fmt.Errorf("peer name %q is empty or repeated", p.Name)
		}
		if keys[p.PublicKey] {
			return fmt.Errorf("peer %s: its public key is another peer's", p.Name)
		}
		names[p.Name], keys[p.PublicKey] = true, true
		for _, a := range p.AllowedIPs {
			if !a.IsValid() {
				return fmt.Errorf("peer %s: invalid allowed IP", p.Name)
			}
			if o, dup := owner[a.Masked()]; dup {
				return fmt.Errorf("prefix %s on peers %s and %s", a, o, p.Name)
			}
			owner[a.Masked()] = p.Name
		}
	}
	for _, r := range append(slices.Clone(m.Routes), m.Interface.Addresses...) {
		if !r.IsValid() {
			return errors.New("invalid route or address")
		}
	}
	return nil
}
