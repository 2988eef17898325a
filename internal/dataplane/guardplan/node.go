package guardplan

import (
	"net/netip"

	"github.com/statemesh/statemesh/internal/netmap"
)

// Node is what a node adds to its map for its guard: the agent's flags,
// what the WireGuard device learned, and the interface's addresses.
type Node struct {
	// WireGuardFrom are ranges WireGuard may always come from (the
	// underlay ranges, operators' clients).
	WireGuardFrom []netip.Prefix
	// ManagementFrom, when set, restricts the Open ports to these
	// sources; otherwise they are open to all (as in the nftables table).
	ManagementFrom []netip.Prefix
	Open           []netmap.PortRange
	Learned        []netip.Addr
	Local          []netip.Addr
	// Limits; zero values take the defaults below.
	HandshakesPerSource uint32
	HandshakesTotal     uint32
	WindowNanos         uint64
	EphemeralFrom       uint16
	EphemeralTo         uint16
}

// Defaults. A WireGuard peer initiates at most one handshake every 5
// seconds (REKEY_TIMEOUT), so 20 per second per source leaves room for
// many peers behind one NAT address; 1,000 per second in total keeps a
// spoofed flood's cost to WireGuard bounded (it answers with cookies
// under load besides).
const (
	DefaultHandshakesPerSource = 20
	DefaultHandshakesTotal     = 1000
	DefaultWindowNanos         = 1e9
	// Linux's default net.ipv4.ip_local_port_range.
	DefaultEphemeralFrom = 32768
	DefaultEphemeralTo   = 60999
)

// FromMap is the guard's input for a node's map: WireGuard on the map's
// listen port and its backbone links' ports, from the peers' and links'
// endpoints; BGP and BFD from the map's external routers.
func FromMap(m netmap.Map, n Node) Input {
	in := Input{
		WireGuardFrom:       n.WireGuardFrom,
		Learned:             n.Learned,
		Local:               n.Local,
		HandshakesPerSource: or(n.HandshakesPerSource, DefaultHandshakesPerSource),
		HandshakesTotal:     or(n.HandshakesTotal, DefaultHandshakesTotal),
		WindowNanos:         or(n.WindowNanos, DefaultWindowNanos),
		EphemeralFrom:       or(n.EphemeralFrom, DefaultEphemeralFrom),
		EphemeralTo:         or(n.EphemeralTo, DefaultEphemeralTo),
	}
	if m.Interface.ListenPort > 0 {
		in.WireGuardPorts = append(in.WireGuardPorts, m.Interface.ListenPort)
	}
	for _, p := range m.Peers {
		if p.Endpoint.IsValid() {
			in.Peers = append(in.Peers, p.Endpoint.Addr().Unmap())
		}
	}
	if rt := m.Routing; rt != nil {
		for _, l := range rt.Links {
			in.WireGuardPorts = append(in.WireGuardPorts, l.ListenPort)
			if l.Endpoint.IsValid() {
				in.Peers = append(in.Peers, l.Endpoint.Addr().Unmap())
			}
		}
		for _, x := range rt.External {
			in.BGPPeers = append(in.BGPPeers, x.Address)
		}
	}
	if len(n.ManagementFrom) > 0 {
		in.Management, in.ManagementPorts = n.ManagementFrom, n.Open
	} else {
		in.Open = n.Open
	}
	return in
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
