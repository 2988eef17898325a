package spec

import (
	"fmt"
	"net/netip"
	"time"
)

// Dynamic routing defaults.
const (
	// DefaultASNBase is the first private 4-byte AS number (RFC 6996);
	// region i (in spec order) gets DefaultASNBase + i unless it sets asn.
	DefaultASNBase      = 4200000000
	DefaultBFDInterval  = "100ms"
	DefaultBFDMultiples = 3
	// DefaultPeersPerRegion is how many gateways of each other region a
	// gateway has a backbone link to (routing.backbone.peersPerRegion).
	DefaultPeersPerRegion = 2
	// MaxPeersPerRegion bounds routing.backbone.peersPerRegion: a region
	// has at most 32 gateway slots.
	MaxPeersPerRegion = 32
)

// Routing selects how traffic crosses regions. Without it (or with bgp
// false) the controller's designated gateways route (baseline); with bgp,
// gateways run BIRD: BGP over point-to-point WireGuard backbone links,
// BFD on every session.
type Routing struct {
	// BGP turns BIRD mode on for every region (regions[].bgp.enabled
	// overrides it per region; regions talk BGP with each other only when
	// both have it).
	BGP bool `yaml:"bgp" json:"bgp"`
	BFD BFD  `yaml:"bfd" json:"bfd"`
	// Backbone bounds the links between gateways of different regions.
	Backbone Backbone `yaml:"backbone" json:"backbone"`
}

// Backbone shapes the BIRD-mode backbone (docs/routing.md#the-backbone).
type Backbone struct {
	// PeersPerRegion is how many gateways of each other region a gateway
	// has a link (and an eBGP session) to: 1..32, default 2. Inside its
	// own region a gateway links to every gateway (iBGP). A value at least
	// as large as every region's gateway count makes a full mesh.
	PeersPerRegion int `yaml:"peersPerRegion" json:"peersPerRegion,omitempty"`
}

// BFD timers of every session.
type BFD struct {
	// Interval is the transmit and receive interval (Go duration,
	// 10ms..10s, default 100ms); a session is down after Multiplier
	// missed packets (1..255, default 3).
	Interval   string `yaml:"interval" json:"interval"`
	Multiplier int    `yaml:"multiplier" json:"multiplier"`
}

// RegionBGP is a region's dynamic routing.
type RegionBGP struct {
	// Enabled overrides routing.bgp for this region.
	Enabled *bool `yaml:"enabled" json:"enabled,omitempty"`
	// ASN is the region's AS number (default DefaultASNBase + the
	// region's index); regions must not share one.
	ASN uint32 `yaml:"asn" json:"asn,omitempty"`
	// ExternalPeers are the operator's routers the region's gateways
	// announce its cluster prefixes to (nothing is imported from them).
	ExternalPeers []ExternalPeer `yaml:"externalPeers" json:"externalPeers,omitempty"`
}

// ExternalPeer is an operator's BGP router.
type ExternalPeer struct {
	Name    string `yaml:"name" json:"name"`
	Address string `yaml:"address" json:"address"`
	ASN     uint32 `yaml:"asn" json:"asn"`
	// Password is the TCP MD5 password of the session (stored in the
	// spec like the rest of it; printable ASCII without quotes or
	// backslashes).
	Password string `yaml:"password" json:"password,omitempty"`
	// BFD runs BFD on the session (default false: routers often lack it).
	BFD bool `yaml:"bfd" json:"bfd,omitempty"`
	// Multihop is the TTL for a router that is not on the gateway's own
	// network (0: directly connected).
	Multihop int `yaml:"multihop" json:"multihop,omitempty"`
}

// BGPEnabled reports whether region i runs BIRD mode.
func (m *Mesh) BGPEnabled(i int) bool {
	if b := m.Regions[i].BGP; b != nil && b.Enabled != nil {
		return *b.Enabled
	}
	return m.Routing != nil && m.Routing.BGP
}

// RegionASN is region i's AS number.
func (m *Mesh) RegionASN(i int) uint32 {
	if b := m.Regions[i].BGP; b != nil && b.ASN != 0 {
		return b.ASN
	}
	return DefaultASNBase + uint32(i)
}

// BFDTimers returns the BFD interval and multiplier (defaults applied).
func (m *Mesh) BFDTimers() (time.Duration, int) {
	iv, mult := DefaultBFDInterval, DefaultBFDMultiples
	if m.Routing != nil {
		if m.Routing.BFD.Interval != "" {
			iv = m.Routing.BFD.Interval
		}
		if m.Routing.BFD.Multiplier != 0 {
			mult = m.Routing.BFD.Multiplier
		}
	}
	d, _ := time.ParseDuration(iv)
	return d, mult
}

// PeersPerRegion returns routing.backbone.peersPerRegion (default applied).
func (m *Mesh) PeersPerRegion() int {
	if m.Routing != nil && m.Routing.Backbone.PeersPerRegion != 0 {
		return m.Routing.Backbone.PeersPerRegion
	}
	return DefaultPeersPerRegion
}

// validASN refuses 0, AS_TRANS (23456, RFC 6793) and the reserved last
// 2- and 4-byte numbers (65535, 4294967295, RFC 7300).
func validASN(a uint32) bool {
	return a != 0 && a != 23456 && a != 65535 && a != 4294967295
}

func safePassword(s string) bool {
	for _, r := range s {
		if r < 0x21 || r > 0x7e || r == '"' || r == '\\' {
			return false
		}
	}
	return len(s) <= 80
}

func (m *Mesh) checkRouting(e *errs) {
	if r := m.Routing; r != nil {
		if r.BFD.Interval != "" {
			d, err := time.ParseDuration(r.BFD.Interval)
			if err != nil || d < 10*time.Millisecond || d > 10*time.Second {
				e.add("routing.bfd.interval", "use a duration between 10ms and 10s, e.g. 100ms", "invalid BFD interval %q", r.BFD.Interval)
			}
		}
		if r.BFD.Multiplier < 0 || r.BFD.Multiplier > 255 {
			e.add("routing.bfd.multiplier", "use 1 to 255 (default 3)", "invalid BFD multiplier %d", r.BFD.Multiplier)
		}
		if k := r.Backbone.PeersPerRegion; k < 0 || k > MaxPeersPerRegion {
			e.add("routing.backbone.peersPerRegion", fmt.Sprintf("use 1 to %d (default %d)", MaxPeersPerRegion, DefaultPeersPerRegion), "invalid peers per region %d", k)
		}
	}
	asns := map[uint32]int{}
	for i, r := range m.Regions {
		p := fmt.Sprintf("regions[%d].bgp", i)
		b := r.BGP
		if b == nil {
			continue
		}
		if b.ASN != 0 && !validASN(b.ASN) {
			e.add(p+".asn", "use a private AS number (64512-65534 or 4200000000-4294967294) or your own", "AS number %d is reserved", b.ASN)
		}
		if len(b.ExternalPeers) > 0 && !m.BGPEnabled(i) {
			e.add(p+".externalPeers", "set routing.bgp: true or regions[].bgp.enabled: true", "external BGP peers need BIRD mode, which is off for region %s", r.Name)
		}
		names := map[string]bool{}
		for j, x := range b.ExternalPeers {
			xp := fmt.Sprintf("%s.externalPeers[%d]", p, j)
			if !IsDNSLabel(x.Name) || names[x.Name] {
				e.add(xp+".name", "give each peer a unique DNS-label name", "peer name %q is not a unique DNS label", x.Name)
			}
			names[x.Name] = true
			if a, err := netip.ParseAddr(x.Address); err != nil || a.Zone() != "" || !a.IsGlobalUnicast() && !a.IsPrivate() {
				e.add(xp+".address", "use the router's unicast IPv4 or IPv6 address", "invalid peer address %q", x.Address)
			}
			if !validASN(x.ASN) {
				e.add(xp+".asn", "use the router's AS number", "AS number %d is invalid or reserved", x.ASN)
			} else if x.ASN == m.RegionASN(i) {
				e.add(xp+".asn", "external peers are eBGP: use a different AS number than the region's", "peer AS %d is the region's own", x.ASN)
			}
			if !safePassword(x.Password) {
				e.add(xp+".password", "use at most 80 printable ASCII characters without quotes, backslashes or spaces", "the password cannot be written into a BIRD config safely")
			}
			if x.Multihop < 0 || x.Multihop > 255 {
				e.add(xp+".multihop", "use 0 (directly connected) to 255", "invalid multihop TTL %d", x.Multihop)
			}
		}
	}
	for i := range m.Regions {
		if !m.BGPEnabled(i) {
			continue
		}
		a := m.RegionASN(i)
		if j, dup := asns[a]; dup {
			e.add(fmt.Sprintf("regions[%d].bgp.asn", i), "give every region its own AS number", "AS %d is also regions[%d]'s", a, j)
		}
		asns[a] = i
	}
}
