// Package guardplan compiles what a node's underlay guard (the XDP program
// of dataplane/xdpguard) must know into map entries, and diffs two
// compilations into the in-place updates that turn one into the other. It
// is pure: no kernel access, sorted outputs.
//
// The guard's model, which the program and this compiler share:
//
//   - Sources: an address prefix → a mask of source classes (ClassWireGuard,
//     ClassBGP, ClassManagement). The program looks sources up in a longest
//     prefix match trie, so a prefix's mask includes the classes of every
//     prefix that contains it: a peer inside an allowed underlay range keeps
//     the range's classes.
//   - Ports: (protocol, port) → what the port is: a WireGuard port (known
//     sources pass; handshake initiations from unknown sources pass under a
//     rate limit), a restricted service (only sources with one of the
//     port's classes), or an open port (everyone).
//   - Local: the node's own addresses on the interface; packets to other
//     destinations (transit, broadcast, multicast) are not the guard's.
//   - Config: the rate limits and the ephemeral port range.
//
// Addresses are 16-byte keys; IPv4 is IPv4-mapped (::ffff:a.b.c.d, its
// prefixes 96 bits longer) so one trie and one hash serve both families.
package guardplan

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/statemesh/statemesh/internal/netmap"
)

// Source classes: bits of a source's mask and of a port's required mask.
const (
	ClassWireGuard  uint32 = 1 << 0
	ClassBGP        uint32 = 1 << 1
	ClassManagement uint32 = 1 << 2
)

// Port kinds, the low byte of a port's value.
const (
	KindWireGuard  uint32 = 1
	KindRestricted uint32 = 2
	KindOpen       uint32 = 3
)

// IP protocol numbers in port keys.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// MaxPorts bounds the port entries one compilation may produce (ranges are
// expanded port by port).
const MaxPorts = 16384

// Input is everything the guard of one node is built from.
type Input struct {
	// WireGuardPorts are the UDP ports WireGuard listens on (the mesh
	// interface's and, on BIRD-mode gateways, the backbone links').
	WireGuardPorts []int
	// Peers are the peers' endpoint addresses from the map; Learned are
	// the endpoints the WireGuard device has authenticated (roaming, NAT),
	// which the map may not know yet.
	Peers   []netip.Addr
	Learned []netip.Addr
	// WireGuardFrom are ranges WireGuard may always come from: the
	// underlay ranges of the plan and the operators' clients.
	WireGuardFrom []netip.Prefix
	// BGPPeers may reach BGP (tcp/179) and BFD (udp/3784, udp/4784).
	BGPPeers []netip.Addr
	// Management are sources allowed to the ManagementPorts.
	Management      []netip.Prefix
	ManagementPorts []netmap.PortRange
	// Open are ports open to every source (the agent's --underlay-allow).
	Open []netmap.PortRange
	// Local are the node's addresses on the guarded interface.
	Local []netip.Addr
	// HandshakesPerSource and HandshakesTotal limit WireGuard handshake
	// initiations from unknown sources per Window (0: none pass).
	HandshakesPerSource uint32
	HandshakesTotal     uint32
	WindowNanos         uint64
	// EphemeralFrom..EphemeralTo is the local port range of the node's own
	// UDP requests (DNS, NTP): their replies pass to the stack, where
	// connection tracking decides.
	EphemeralFrom, EphemeralTo uint16
}

// Config is the program's configuration entry.
type Config struct {
	WindowNanos         uint64
	HandshakesPerSource uint32
	HandshakesTotal     uint32
	EphemeralFrom       uint16
	EphemeralTo         uint16
	Flags               uint32
}

// PortKey is a port entry's key: protocol<<16 | port.
type PortKey uint32

// MakePortKey builds a port key.
func MakePortKey(proto uint8, port uint16) PortKey { return PortKey(uint32(proto)<<16 | uint32(port)) }

// Proto and Port split a port key.
func (k PortKey) Proto() uint8 { return uint8(k >> 16) }
func (k PortKey) Port() uint16 { return uint16(k) }

// String is "udp/51820".
func (k PortKey) String() string {
	switch k.Proto() {
	case ProtoTCP:
		return fmt.Sprintf("tcp/%d", k.Port())
	case ProtoUDP:
		return fmt.Sprintf("udp/%d", k.Port())
	}
	return fmt.Sprintf("%d/%d", k.Proto(), k.Port())
}

// PortValue builds a port's value: its kind and the classes it admits.
func PortValue(kind, classes uint32) uint32 { return kind | classes<<8 }

// Entries is the content of the guard's maps.
type Entries struct {
	Sources map[netip.Prefix]uint32
	Ports   map[PortKey]uint32
	Local   []netip.Addr
	Config  Config
}

// Compile turns an input into map entries. Invalid addresses are ignored;
// too many ports is an error naming the input.
func Compile(in Input) (Entries, error) {
	e := Entries{Sources: map[netip.Prefix]uint32{}, Ports: map[PortKey]uint32{}}
	add := func(p netip.Prefix, class uint32) {
		if p.IsValid() {
			p = Mapped(p)
			e.Sources[p] |= class
		}
	}
	host := func(a netip.Addr) netip.Prefix {
		if !a.IsValid() {
			return netip.Prefix{}
		}
		return netip.PrefixFrom(a, a.BitLen())
	}
	for _, a := range in.Peers {
		add(host(a), ClassWireGuard)
	}
	for _, a := range in.Learned {
		add(host(a), ClassWireGuard)
	}
	for _, p := range in.WireGuardFrom {
		add(p, ClassWireGuard)
	}
	for _, a := range in.BGPPeers {
		add(host(a), ClassBGP)
	}
	for _, p := range in.Management {
		add(p, ClassManagement)
	}
	// Longest prefix match: a prefix inherits the classes of the ranges
	// that contain it (directly: containment is transitive). Work: sources
	// times ranges; ranges are few, hosts many.
	own := maps.Clone(e.Sources)
	var within []netip.Prefix
	for p := range own {
		if p.Bits() < p.Addr().BitLen() {
			within = append(within, p)
		}
	}
	for p := range e.Sources {
		for _, q := range within {
			if q.Bits() < p.Bits() && q.Contains(p.Addr()) {
				e.Sources[p] |= own[q]
			}
		}
	}

	setPort := func(proto uint8, port int, kind, classes uint32) error {
		if port <= 0 || port > 65535 {
			return fmt.Errorf("port %d out of range", port)
		}
		k := MakePortKey(proto, uint16(port))
		old, ok := e.Ports[k]
		switch {
		case !ok:
			e.Ports[k] = PortValue(kind, classes)
		case old&0xff == KindOpen || kind == KindOpen:
			e.Ports[k] = PortValue(KindOpen, 0)
		case old&0xff == KindWireGuard || kind == KindWireGuard:
			e.Ports[k] = PortValue(KindWireGuard, old>>8|classes)
		default:
			e.Ports[k] = PortValue(KindRestricted, old>>8|classes)
		}
		if len(e.Ports) > MaxPorts {
			return fmt.Errorf("more than %d ports", MaxPorts)
		}
		return nil
	}
	ranges := func(what string, rs []netmap.PortRange, kind, classes uint32) error {
		for _, r := range rs {
			var proto uint8
			switch r.Proto {
			case "tcp":
				proto = ProtoTCP
			case "udp":
				proto = ProtoUDP
			default:
				continue // ICMP passes the guard; the stack's firewall decides.
			}
			to := r.To
			if to == 0 {
				to = r.From
			}
			for p := r.From; p <= to; p++ {
				if err := setPort(proto, p, kind, classes); err != nil {
					return fmt.Errorf("%s %s/%d-%d: %w", what, r.Proto, r.From, to, err)
				}
			}
		}
		return nil
	}
	for _, p := range in.WireGuardPorts {
		if err := setPort(ProtoUDP, p, KindWireGuard, ClassWireGuard); err != nil {
			return Entries{}, fmt.Errorf("wireguard port: %w", err)
		}
	}
	if len(in.BGPPeers) > 0 {
		for _, p := range []struct {
			proto uint8
			port  int
		}{{ProtoTCP, 179}, {ProtoUDP, 3784}, {ProtoUDP, 4784}} {
			if err := setPort(p.proto, p.port, KindRestricted, ClassBGP); err != nil {
				return Entries{}, err
			}
		}
	}
	if err := ranges("management port", in.ManagementPorts, KindRestricted, ClassManagement); err != nil {
		return Entries{}, err
	}
	if err := ranges("open port", in.Open, KindOpen, 0); err != nil {
		return Entries{}, err
	}

	for _, a := range in.Local {
		if a.IsValid() {
			e.Local = append(e.Local, Mapped(host(a)).Addr())
		}
	}
	slices.SortFunc(e.Local, netip.Addr.Compare)
	e.Local = slices.Compact(e.Local)
	e.Config = Config{WindowNanos: in.WindowNanos, HandshakesPerSource: in.HandshakesPerSource, HandshakesTotal: in.HandshakesTotal,
		EphemeralFrom: in.EphemeralFrom, EphemeralTo: in.EphemeralTo}
	return e, nil
}

// Mapped returns p with an IPv4 address written IPv4-mapped (its length
// 96 bits longer), masked; IPv6 prefixes are masked.
func Mapped(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	if a.Is4() {
		return netip.PrefixFrom(netip.AddrFrom16(a.As16()), p.Bits()+96).Masked()
	}
	return p.Masked()
}

// Unmapped is Mapped's inverse, for display.
func Unmapped(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// Delta is the in-place update from one compilation to the next: entries
// to write and keys to delete, each sorted.
type Delta struct {
	SourcePut []SourceEntry
	SourceDel []netip.Prefix
	PortPut   []PortEntry
	PortDel   []PortKey
	LocalPut  []netip.Addr
	LocalDel  []netip.Addr
	Config    *Config
}

// SourceEntry is one source prefix and its classes.
type SourceEntry struct {
	Prefix  netip.Prefix
	Classes uint32
}

// PortEntry is one port and its value.
type PortEntry struct {
	Key   PortKey
	Value uint32
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool {
	return len(d.SourcePut) == 0 && len(d.SourceDel) == 0 && len(d.PortPut) == 0 && len(d.PortDel) == 0 &&
		len(d.LocalPut) == 0 && len(d.LocalDel) == 0 && d.Config == nil
}

// Diff returns the updates that turn old into new (old may be the zero
// Entries: then everything is written).
func Diff(old, new Entries) Delta {
	var d Delta
	for p, c := range new.Sources {
		if oc, ok := old.Sources[p]; !ok || oc != c {
			d.SourcePut = append(d.SourcePut, SourceEntry{p, c})
		}
	}
	for p := range old.Sources {
		if _, ok := new.Sources[p]; !ok {
			d.SourceDel = append(d.SourceDel, p)
		}
	}
	for k, v := range new.Ports {
		if ov, ok := old.Ports[k]; !ok || ov != v {
			d.PortPut = append(d.PortPut, PortEntry{k, v})
		}
	}
	for k := range old.Ports {
		if _, ok := new.Ports[k]; !ok {
			d.PortDel = append(d.PortDel, k)
		}
	}
	for _, a := range new.Local {
		if _, ok := slices.BinarySearchFunc(old.Local, a, netip.Addr.Compare); !ok {
			d.LocalPut = append(d.LocalPut, a)
		}
	}
	for _, a := range old.Local {
		if _, ok := slices.BinarySearchFunc(new.Local, a, netip.Addr.Compare); !ok {
			d.LocalDel = append(d.LocalDel, a)
		}
	}
	if old.Config != new.Config {
		c := new.Config
		d.Config = &c
	}
	slices.SortFunc(d.SourcePut, func(a, b SourceEntry) int { return netmap.ComparePrefix(a.Prefix, b.Prefix) })
	slices.SortFunc(d.SourceDel, netmap.ComparePrefix)
	slices.SortFunc(d.PortPut, func(a, b PortEntry) int { return cmp.Compare(a.Key, b.Key) })
	slices.Sort(d.PortDel)
	return d
}
