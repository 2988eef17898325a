package netmap

import (
	"net/netip"
	"slices"
)

// Routing is a gateway's dynamic routing in BIRD mode: its backbone links
// (one point-to-point WireGuard interface per other BIRD-mode gateway) and
// what BIRD announces and accepts over them.
type Routing struct {
	ASN uint32 `json:"asn"`
	// RouterID is the gateway's overlay IPv4 address.
	RouterID netip.Addr `json:"routerID"`
	// RouterIPv6 is the gateway's overlay IPv6 address, when the mesh
	// has an IPv6 overlay: the source of IPv6 routes BIRD installs.
	RouterIPv6    netip.Addr `json:"routerIPv6,omitzero"`
	BFDIntervalMs int        `json:"bfdIntervalMs"`
	BFDMultiplier int        `json:"bfdMultiplier"`
	// Originate are the prefixes of the clusters this gateway is
	// designated for: only the designated gateway originates a cluster;
	// the region's other gateways learn it over iBGP and pass it on with
	// a longer AS path, so traffic enters through the designated gateway
	// while its links are up and through another (forwarded to it over
	// iBGP) when they are not.
	Originate []netip.Prefix `json:"originate,omitempty"`
	// Links are the backbone links, sorted by Interface.
	Links []BackboneLink `json:"links"`
	// Accept are the prefixes each other BIRD-mode region may announce.
	Accept []RegionPrefixes `json:"accept,omitempty"`
	// Local are every prefix of this gateway's own region (accepted over
	// iBGP only).
	Local []netip.Prefix `json:"local,omitempty"`
	// External are the operator's routers: the region's prefixes are
	// announced to them, nothing is imported.
	External []ExternalPeer `json:"external,omitempty"`
}

// BackboneLink is one point-to-point WireGuard link to another gateway.
type BackboneLink struct {
	// Interface is the local interface (smbbN, N the remote gateway's
	// global number); ListenPort its UDP port.
	Interface  string `json:"interface"`
	ListenPort int    `json:"listenPort"`
	// Address is this end's /31; PeerAddress the other end's.
	Address     netip.Prefix   `json:"address"`
	PeerAddress netip.Addr     `json:"peerAddress"`
	Peer        string         `json:"peer"`
	PeerRegion  string         `json:"peerRegion"`
	PeerASN     uint32         `json:"peerASN"`
	PublicKey   Key            `json:"publicKey"`
	Endpoint    netip.AddrPort `json:"endpoint"`
	MTU         int            `json:"mtu"`
}

// RegionPrefixes are the prefixes one region may announce.
type RegionPrefixes struct {
	Region   string         `json:"region"`
	ASN      uint32         `json:"asn"`
	Prefixes []netip.Prefix `json:"prefixes"`
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

// Equal reports whether two routings are the same.
func (r *Routing) Equal(o *Routing) bool {
	if r == nil || o == nil {
		return r == o
	}
	return r.ASN == o.ASN && r.RouterID == o.RouterID && r.RouterIPv6 == o.RouterIPv6 && r.BFDIntervalMs == o.BFDIntervalMs && r.BFDMultiplier == o.BFDMultiplier &&
		slices.Equal(r.Originate, o.Originate) && slices.Equal(r.Links, o.Links) && slices.Equal(r.Local, o.Local) &&
		slices.EqualFunc(r.Accept, o.Accept, func(a, b RegionPrefixes) bool {
			return a.Region == b.Region && a.ASN == b.ASN && slices.Equal(a.Prefixes, b.Prefixes)
		}) && slices.Equal(r.External, o.External)
}

// HasIPv6 reports whether the routing carries IPv6 prefixes: then BGP
// gets an IPv6 channel next to the IPv4 one.
func (r *Routing) HasIPv6() bool {
	has := func(ps []netip.Prefix) bool {
		return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr().Is6() })
	}
	if has(r.Originate) || has(r.Local) {
		return true
	}
	for _, a := range r.Accept {
		if has(a.Prefixes) {
			return true
		}
	}
	return false
}
