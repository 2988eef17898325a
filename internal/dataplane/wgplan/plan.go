// Package wgplan computes what the data plane must change on a node: the minimum
// operations that turn the actual WireGuard device, addresses and routes
// into the desired network map. It is pure (no kernel access) so the rules
// that keep traffic flowing are unit-tested:
//
//   - equal desired and actual state yields no operation at all;
//   - one peer added, removed or changed is one peer operation; a resync
//     never rewrites the whole device;
//   - an endpoint is written only for a new peer, a peer without one, or
//     when the controller's endpoint for it changed since the last applied
//     map; an endpoint the data plane learned by roaming is never
//     overwritten by an unchanged map.
package wgplan

import (
	"net/netip"
	"slices"

	"github.com/statemesh/statemesh/internal/netmap"
)

// Peer is a peer as the device reports it.
type Peer struct {
	PublicKey           netmap.Key
	Endpoint            netip.AddrPort
	AllowedIPs          []netip.Prefix
	PersistentKeepalive int // seconds
}

// Device is the actual state of the node's WireGuard interface.
type Device struct {
	Exists     bool
	PublicKey  netmap.Key
	ListenPort int
	Peers      []Peer
	MTU        int
	Up         bool
	Addresses  []netip.Prefix
	// Routes are the routes through the interface that StateMesh owns.
	Routes     []netip.Prefix
	Forwarding bool
}

// OpKind is what a peer operation does.
type OpKind int

// Peer operation kinds.
const (
	OpAdd OpKind = iota
	OpUpdate
	OpRemove
)

func (k OpKind) String() string {
	return [...]string{"add", "update", "remove"}[k]
}

// PeerOp is one WireGuard peer operation. Nil fields are left untouched.
type PeerOp struct {
	Kind      OpKind
	Name      string
	PublicKey netmap.Key
	// Endpoint, when set, is written.
	Endpoint *netip.AddrPort
	// AllowedIPs, when set, replace the peer's allowed IPs.
	AllowedIPs []netip.Prefix
	ReplaceIPs bool
	// Keepalive, when set, is written (seconds).
	Keepalive *int
}

// Ops is everything to change.
type Ops struct {
	// Key is set when the device's private key must be (re)written: a new
	// device, or one whose public key differs from ours.
	SetKey     bool
	ListenPort *int
	Peers      []PeerOp
	MTU        *int
	Up         bool
	AddAddrs   []netip.Prefix
	DelAddrs   []netip.Prefix
	AddRoutes  []netip.Prefix
	DelRoutes  []netip.Prefix
	Forwarding *bool
}

// Empty reports whether nothing needs to change.
func (o Ops) Empty() bool {
	return !o.SetKey && o.ListenPort == nil && len(o.Peers) == 0 && o.MTU == nil && !o.Up &&
		len(o.AddAddrs) == 0 && len(o.DelAddrs) == 0 && len(o.AddRoutes) == 0 && len(o.DelRoutes) == 0 && o.Forwarding == nil
}

// Count returns the number of operations.
func (o Ops) Count() int {
	n := len(o.Peers) + len(o.AddAddrs) + len(o.DelAddrs) + len(o.AddRoutes) + len(o.DelRoutes)
	for _, b := range []bool{o.SetKey, o.ListenPort != nil, o.MTU != nil, o.Up, o.Forwarding != nil} {
		if b {
			n++
		}
	}
	return n
}

func setDiff(want, have []netip.Prefix) (add, del []netip.Prefix) {
	w := make(map[netip.Prefix]bool, len(want))
	for _, p := range want {
		w[p.Masked()] = true
	}
	h := make(map[netip.Prefix]bool, len(have))
	for _, p := range have {
		h[p.Masked()] = true
	}
	for _, p := range want {
		if !h[p.Masked()] {
			add = append(add, p)
		}
	}
	for _, p := range have {
		if !w[p.Masked()] {
			del = append(del, p)
		}
	}
	return netmap.SortPrefixes(add), netmap.SortPrefixes(del)
}

// addrDiff compares interface addresses exactly (address and length).
func addrDiff(want, have []netip.Prefix) (add, del []netip.Prefix) {
	for _, p := range want {
		if !slices.Contains(have, p) {
			add = append(add, p)
		}
	}
	for _, p := range have {
		if !slices.Contains(want, p) {
			del = append(del, p)
		}
	}
	return add, del
}

// addPeer is the operation that adds peer p: its allowed IPs, and its
// endpoint and keepalive when it has them.
func addPeer(p netmap.Peer) PeerOp {
	op := PeerOp{Kind: OpAdd, Name: p.Name, PublicKey: p.PublicKey, AllowedIPs: p.AllowedIPs, ReplaceIPs: true}
	if p.Endpoint.IsValid() {
		ep := p.Endpoint
		op.Endpoint = &ep
	}
	if p.PersistentKeepalive != 0 {
		k := p.PersistentKeepalive
		op.Keepalive = &k
	}
	return op
}

// Compute returns the operations that turn actual into desired. prev is
// the desired map applied last (its endpoints tell which endpoints the
// controller changed); ourKey is the node's public key.
func Compute(desired netmap.Map, prev netmap.Map, actual Device, ourKey netmap.Key) Ops {
	var ops Ops
	if !actual.Exists || actual.PublicKey != ourKey {
		ops.SetKey = true
	}
	if actual.ListenPort != desired.Interface.ListenPort && desired.Interface.ListenPort != 0 {
		p := desired.Interface.ListenPort
		ops.ListenPort = &p
	}
	have := make(map[netmap.Key]Peer, len(actual.Peers))
	for _, p := range actual.Peers {
		have[p.PublicKey] = p
	}
	prevEP := make(map[netmap.Key]netip.AddrPort, len(prev.Peers))
	for _, p := range prev.Peers {
		prevEP[p.PublicKey] = p.Endpoint
	}
	want := make(map[netmap.Key]bool, len(desired.Peers))
	for _, d := range desired.Peers {
		want[d.PublicKey] = true
		a, ok := have[d.PublicKey]
		if !ok {
			ops.Peers = append(ops.Peers, addPeer(d))
			continue
		}
		op := PeerOp{Kind: OpUpdate, Name: d.Name, PublicKey: d.PublicKey}
		changed := false
		if add, del := setDiff(d.AllowedIPs, a.AllowedIPs); len(add) > 0 || len(del) > 0 {
			op.AllowedIPs, op.ReplaceIPs, changed = d.AllowedIPs, true, true
		}
		if d.Endpoint.IsValid() && d.Endpoint != a.Endpoint {
			pe, known := prevEP[d.PublicKey]
			if !a.Endpoint.IsValid() || !known || pe != d.Endpoint {
				ep := d.Endpoint
				op.Endpoint, changed = &ep, true
			}
		}
		if d.PersistentKeepalive != a.PersistentKeepalive {
			k := d.PersistentKeepalive
			op.Keepalive, changed = &k, true
		}
		if changed {
			ops.Peers = append(ops.Peers, op)
		}
	}
	for _, a := range actual.Peers {
		if !want[a.PublicKey] {
			ops.Peers = append(ops.Peers, PeerOp{Kind: OpRemove, PublicKey: a.PublicKey})
		}
	}
	if desired.Interface.MTU != 0 && desired.Interface.MTU != actual.MTU {
		m := desired.Interface.MTU
		ops.MTU = &m
	}
	ops.Up = !actual.Up
	ops.AddAddrs, ops.DelAddrs = addrDiff(desired.Interface.Addresses, actual.Addresses)
	ops.AddRoutes, ops.DelRoutes = setDiff(desired.Routes, actual.Routes)
	if desired.Forwarding && !actual.Forwarding {
		f := true
		ops.Forwarding = &f
	}
	return ops
}

// FromDelta returns the operations for one delta, without reading the
// device: the device is assumed to hold prev (the agent's last applied
// map), and next is prev with d applied. The work is proportional to the
// delta, not to the number of peers; the agent's periodic full Compute
// repairs any drift this assumption misses.
func FromDelta(prev, next netmap.Map, d netmap.Delta) Ops {
	var ops Ops
	prevPeers := make(map[string]netmap.Peer, len(d.Upsert)+len(d.Remove))
	for _, name := range d.Remove {
		if p, ok := prev.Peer(name); ok {
			prevPeers[name] = p
		}
	}
	for _, u := range d.Upsert {
		if p, ok := prev.Peer(u.Name); ok {
			prevPeers[u.Name] = p
		}
	}
	for _, name := range d.Remove {
		if p, ok := prevPeers[name]; ok {
			ops.Peers = append(ops.Peers, PeerOp{Kind: OpRemove, Name: name, PublicKey: p.PublicKey})
		}
	}
	for _, u := range d.Upsert {
		old, existed := prevPeers[u.Name]
		if existed && old.PublicKey != u.PublicKey {
			// A new key is a new WireGuard peer.
			ops.Peers = append(ops.Peers, PeerOp{Kind: OpRemove, Name: u.Name, PublicKey: old.PublicKey})
			existed = false
		}
		if !existed {
			ops.Peers = append(ops.Peers, addPeer(u))
			continue
		}
		op := PeerOp{Kind: OpUpdate, Name: u.Name, PublicKey: u.PublicKey}
		changed := false
		if !slices.Equal(old.AllowedIPs, u.AllowedIPs) {
			op.AllowedIPs, op.ReplaceIPs, changed = u.AllowedIPs, true, true
		}
		if u.Endpoint.IsValid() && u.Endpoint != old.Endpoint {
			ep := u.Endpoint
			op.Endpoint, changed = &ep, true
		}
		if u.PersistentKeepalive != old.PersistentKeepalive {
			k := u.PersistentKeepalive
			op.Keepalive, changed = &k, true
		}
		if changed {
			ops.Peers = append(ops.Peers, op)
		}
	}
	if d.Interface != nil {
		if next.Interface.MTU != prev.Interface.MTU && next.Interface.MTU != 0 {
			m := next.Interface.MTU
			ops.MTU = &m
		}
		if next.Interface.ListenPort != prev.Interface.ListenPort && next.Interface.ListenPort != 0 {
			p := next.Interface.ListenPort
			ops.ListenPort = &p
		}
		ops.AddAddrs, ops.DelAddrs = addrDiff(next.Interface.Addresses, prev.Interface.Addresses)
	}
	if d.RoutesChanged {
		ops.AddRoutes, ops.DelRoutes = setDiff(next.Routes, prev.Routes)
	}
	if d.Forwarding != nil && *d.Forwarding && !prev.Forwarding {
		f := true
		ops.Forwarding = &f
	}
	return ops
}
