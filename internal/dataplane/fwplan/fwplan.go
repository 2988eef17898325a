// Package fwplan compiles a node's overlay policy (netmap.Firewall: allow
// rules over named sets of source prefixes) into the entries of the eBPF
// firewall's maps, and states the policy's verdict for one packet
// (Allowed) as the reference both the nftables ruleset and the eBPF
// program must agree with. It is pure.
//
// The model: every set the rules use gets a bit (at most MaxSets); a
// source trie maps each member prefix to the bits of the sets containing
// it (a prefix inherits the bits of the members that contain it, because
// the trie answers with the longest match only); a port map gives, per
// (protocol, port), the bits of the sets allowed there; AnyPort holds the
// sets allowed everything. ICMP is echo requests only (the policy's and
// Cilium's reading): its "port" is the ICMP type, 8 (IPv4) or 128 (IPv6).
// A packet passes when the bits of its source meet AnyPort or its port's
// bits.
package fwplan

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/statemesh/statemesh/internal/netmap"
)

// MaxSets is how many distinct sets one node's rules may use (the bits
// of a u64); a policy with more falls back to nftables.
const MaxSets = 64

// MaxPorts bounds the expanded port entries.
const MaxPorts = 65536

// ErrTooLarge reports a policy the program's maps cannot hold (the node
// then enforces with nftables).
var ErrTooLarge = errors.New("the policy does not fit the eBPF firewall")

// IP protocols and ICMP echo request types.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
	EchoV4      = 8
	EchoV6      = 128
)

// PortKey is protocol<<16 | port (for ICMP: the type).
type PortKey uint32

// MakePortKey builds a port key.
func MakePortKey(proto uint8, port uint16) PortKey { return PortKey(uint32(proto)<<16 | uint32(port)) }

// Entries is the content of the firewall's maps.
type Entries struct {
	// AllowAll: the mesh has no policy; the program passes everything.
	AllowAll bool
	// Sets names the bits: bit i is Sets[i].
	Sets    []string
	Sources map[netip.Prefix]uint64
	Ports   map[PortKey]uint64
	AnyPort uint64
}

// Compile turns a node's firewall into map entries. Prefixes are written
// IPv4-mapped (see guardplan.Mapped) so one trie serves both families.
func Compile(fw *netmap.Firewall) (Entries, error) {
	if fw == nil {
		return Entries{AllowAll: true}, nil
	}
	e := Entries{Sources: map[netip.Prefix]uint64{}, Ports: map[PortKey]uint64{}}
	bit := map[string]uint64{}
	for _, r := range fw.Rules {
		if _, ok := bit[r.Set]; !ok {
			if len(e.Sets) == MaxSets {
				return Entries{}, fmt.Errorf("%w: its rules use more than %d sets", ErrTooLarge, MaxSets)
			}
			bit[r.Set] = 1 << len(e.Sets)
			e.Sets = append(e.Sets, r.Set)
		}
	}
	for _, name := range e.Sets {
		for _, p := range fw.Sets[name] {
			if p.IsValid() {
				e.Sources[mapped(p)] |= bit[name]
			}
		}
	}
	inherit(e.Sources)
	for _, r := range fw.Rules {
		b := bit[r.Set]
		if len(r.Ports) == 0 {
			e.AnyPort |= b
			continue
		}
		for _, p := range r.Ports {
			switch p.Proto {
			case "any":
				e.AnyPort |= b
			case "icmp":
				e.Ports[MakePortKey(ProtoICMP, EchoV4)] |= b
				e.Ports[MakePortKey(ProtoICMPv6, EchoV6)] |= b
			case "tcp", "udp":
				proto := uint8(ProtoTCP)
				if p.Proto == "udp" {
					proto = ProtoUDP
				}
				to := p.To
				if to == 0 {
					to = p.From
				}
				for port := p.From; port <= to && port <= 65535; port++ {
					if port <= 0 {
						continue
					}
					e.Ports[MakePortKey(proto, uint16(port))] |= b
				}
				if len(e.Ports) > MaxPorts {
					return Entries{}, fmt.Errorf("%w: more than %d port entries", ErrTooLarge, MaxPorts)
				}
			}
		}
	}
	return e, nil
}

// inherit ORs into each prefix the bits of the prefixes that contain it.
func inherit(src map[netip.Prefix]uint64) {
	own := maps.Clone(src)
	var ranges []netip.Prefix
	for p := range own {
		if p.Bits() < p.Addr().BitLen() {
			ranges = append(ranges, p)
		}
	}
	for p := range src {
		for _, q := range ranges {
			if q.Bits() < p.Bits() && q.Contains(p.Addr()) {
				src[p] |= own[q]
			}
		}
	}
}

func mapped(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4() {
		return netip.PrefixFrom(netip.AddrFrom16(a.As16()), p.Bits()+96).Masked()
	}
	return p.Masked()
}

// Allowed is the policy's verdict for a packet from src that arrived
// through the overlay: proto and port (TCP, UDP) or ICMP type. It reads
// the firewall directly (no compilation): the reference the compiled maps
// are tested against.
func Allowed(fw *netmap.Firewall, src netip.Addr, proto uint8, port uint16) bool {
	if fw == nil {
		return true
	}
	for _, r := range fw.Rules {
		if !slices.ContainsFunc(fw.Sets[r.Set], func(p netip.Prefix) bool { return p.Contains(src.Unmap()) || p.Contains(src) }) {
			continue
		}
		if len(r.Ports) == 0 {
			return true
		}
		for _, p := range r.Ports {
			to := cmp.Or(p.To, p.From)
			switch {
			case p.Proto == "any":
				return true
			case p.Proto == "icmp" && (proto == ProtoICMP && port == EchoV4 || proto == ProtoICMPv6 && port == EchoV6):
				return true
			case p.Proto == "tcp" && proto == ProtoTCP, p.Proto == "udp" && proto == ProtoUDP:
				if int(port) >= p.From && int(port) <= to {
					return true
				}
			}
		}
	}
	return false
}

// Verdict is what the compiled entries say for the same packet (the
// program's lookup, in Go).
func (e Entries) Verdict(src netip.Addr, proto uint8, port uint16) bool {
	if e.AllowAll {
		return true
	}
	var bits uint64
	best := -1
	a := netip.AddrFrom16(src.As16())
	if src.Is6() && !src.Is4In6() {
		a = src
	}
	for p, b := range e.Sources {
		if p.Contains(a) && p.Bits() > best {
			best, bits = p.Bits(), b
		}
	}
	return bits&e.AnyPort != 0 || bits&e.Ports[MakePortKey(proto, port)] != 0
}

// Delta is the in-place update from one compilation to the next.
type Delta struct {
	SourcePut map[netip.Prefix]uint64
	SourceDel []netip.Prefix
	PortPut   map[PortKey]uint64
	PortDel   []PortKey
	// Config is set when AllowAll or AnyPort changed.
	Config bool
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool {
	return len(d.SourcePut) == 0 && len(d.SourceDel) == 0 && len(d.PortPut) == 0 && len(d.PortDel) == 0 && !d.Config
}

// Diff returns the updates that turn old into new. Bits are positions in
// Sets: when the set list itself changed, every entry may change, and
// Diff says so by rewriting them (the maps hold only bits, never names).
func Diff(old, new Entries) Delta {
	d := Delta{SourcePut: map[netip.Prefix]uint64{}, PortPut: map[PortKey]uint64{}}
	for p, b := range new.Sources {
		if ob, ok := old.Sources[p]; !ok || ob != b {
			d.SourcePut[p] = b
		}
	}
	for p := range old.Sources {
		if _, ok := new.Sources[p]; !ok {
			d.SourceDel = append(d.SourceDel, p)
		}
	}
	for k, b := range new.Ports {
		if ob, ok := old.Ports[k]; !ok || ob != b {
			d.PortPut[k] = b
		}
	}
	for k := range old.Ports {
		if _, ok := new.Ports[k]; !ok {
			d.PortDel = append(d.PortDel, k)
		}
	}
	d.Config = old.AllowAll != new.AllowAll || old.AnyPort != new.AnyPort
	slices.SortFunc(d.SourceDel, netmap.ComparePrefix)
	slices.Sort(d.PortDel)
	return d
}
