// Package birdcfg turns a gateway's routing (netmap.Routing) into a BIRD 2
// configuration, and runs BIRD for the agent: validate before install,
// atomic write, reload, status.
//
// The routing it renders (docs/routing.md):
//   - one BGP session per backbone link, directly connected over the
//     link's /31, with BFD; eBGP to other regions, iBGP inside the region
//     (next hop self);
//   - only the designated gateway of a cluster originates its prefixes
//     (static routes that never reach the kernel); the region's other
//     gateways learn them over iBGP and offer them to other regions with
//     the region's AS prepended twice, so other regions send a cluster's
//     traffic to its designated gateway while its sessions are up, and to
//     another gateway, which forwards it over iBGP, when they are down;
//   - every import and export is filtered by exact prefix lists: a region
//     may announce only its planned prefixes, a gateway exports only its
//     own region's;
//   - routes learned over BGP go to the kernel's main table (proto bird,
//     source address the gateway's overlay address); BIRD learns nothing
//     from the kernel, so StateMesh's own routes are never touched;
//   - a mesh with IPv6 prefixes gets an IPv6 channel on every session
//     (multiprotocol BGP over the link's IPv4 session, IPv4-mapped next
//     hops, RFC 4798): the kernel cannot route IPv6 through an IPv4
//     gateway, so imported IPv6 routes are made routes through the
//     point-to-point link itself. IPv4-only meshes render as before.
package birdcfg

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/statemesh/statemesh/internal/netmap"
)

// DetourTable is the kernel routing table holding the region's own
// prefixes learned over iBGP, looked up by traffic from backbone links to
// other regions (ip rule iif LINK lookup DetourTable).
const DetourTable = 5200

// Header starts every rendered configuration.
const Header = "# Rendered by StateMesh from the controller's map of this gateway; changes are overwritten.\n"

// Session naming: BIRD protocol names of the backbone and external
// sessions, which Status maps back to peers.
func linkProto(l netmap.BackboneLink) string { return "bb_" + l.Interface }
func extProto(x netmap.ExternalPeer) string  { return "ext_" + strings.ReplaceAll(x.Name, "-", "_") }

// Render returns the BIRD configuration of gateway name for rt. It
// refuses routings it cannot express safely.
func Render(name string, rt *netmap.Routing) ([]byte, error) {
	if rt == nil {
		return nil, fmt.Errorf("no routing: the gateway is not in BIRD mode")
	}
	if !rt.RouterID.Is4() {
		return nil, fmt.Errorf("router ID %s: want the gateway's IPv4 overlay address", rt.RouterID)
	}
	if rt.ASN == 0 || rt.BFDIntervalMs < 1 || rt.BFDMultiplier < 1 || rt.BFDMultiplier > 255 {
		return nil, fmt.Errorf("AS %d, BFD %d ms × %d: invalid", rt.ASN, rt.BFDIntervalMs, rt.BFDMultiplier)
	}
	for _, x := range rt.External {
		if strings.ContainsAny(x.Password, "\"\\\n") {
			return nil, fmt.Errorf("external peer %s: the password cannot be written into a BIRD config", x.Name)
		}
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("%s# Gateway %s, AS %d.\n\n", Header, name, rt.ASN)
	w("log stderr all;\nrouter id %s;\ntimeformat protocol \"%%s\";\n\n", rt.RouterID)
	w("define LOCAL_AS = %d;\n", rt.ASN)
	w("define ORIGINATE = %s;\n", prefixSet(rt.Originate))
	w("define LOCAL_REGION = %s;\n", prefixSet(rt.Local))
	var remote []netip.Prefix
	defined := map[string]bool{}
	for _, r := range rt.Accept {
		w("define REGION_%s = %s;\n", ident(r.Region), prefixSet(r.Prefixes))
		remote = append(remote, r.Prefixes...)
		defined[ident(r.Region)] = true
	}
	for _, l := range rt.Links {
		if l.PeerASN != rt.ASN && !defined[ident(l.PeerRegion)] {
			w("define REGION_%s = %s;\n", ident(l.PeerRegion), prefixSet(nil)) // announces nothing we accept
			defined[ident(l.PeerRegion)] = true
		}
	}
	w("define REMOTE = %s;\n", prefixSet(remote))
	has6 := rt.HasIPv6()
	if has6 {
		// BIRD's prefix sets hold one family: the IPv6 channels' filters
		// use sets of their own.
		w("define ORIGINATE6 = %s;\n", prefixSet6(rt.Originate))
		w("define LOCAL_REGION6 = %s;\n", prefixSet6(rt.Local))
		for _, r := range rt.Accept {
			w("define REGION6_%s = %s;\n", ident(r.Region), prefixSet6(r.Prefixes))
		}
		defined6 := map[string]bool{}
		for _, r := range rt.Accept {
			defined6[ident(r.Region)] = true
		}
		for _, l := range rt.Links {
			if l.PeerASN != rt.ASN && !defined6[ident(l.PeerRegion)] {
				w("define REGION6_%s = %s;\n", ident(l.PeerRegion), prefixSet6(nil))
				defined6[ident(l.PeerRegion)] = true
			}
		}
		w("define REMOTE6 = %s;\n", prefixSet6(remote))
	}
	w("\n")

	w("protocol device { scan time 10; }\n\n")
	w("# The prefixes this gateway originates: never installed in the kernel\n# (the mesh interface reaches them); announced over BGP.\n")
	w("protocol static originate4 {\n  ipv4;\n")
	for _, p := range v4(rt.Originate) {
		w("  route %s unreachable;\n", p)
	}
	w("}\n\n")
	if has6 {
		w("protocol static originate6 {\n  ipv6;\n")
		for _, p := range v6(rt.Originate) {
			w("  route %s unreachable;\n", p)
		}
		w("}\n\n")
	}
	w("# Only BGP routes reach the kernel; BIRD learns nothing from it. Other\n# regions' prefixes go to the main table. This region's own (learned over\n# iBGP) go to table %d only, which traffic arriving over backbone links\n# from other regions looks up first: such traffic is forwarded to the\n# cluster's designated gateway, while the region's own traffic keeps its\n# paths through the mesh interface.\n", DetourTable)
	w("protocol kernel kernel4 {\n  ipv4 {\n    import none;\n    export filter {\n      if source = RTS_BGP && !(net ~ LOCAL_REGION) then { krt_prefsrc = %s; accept; }\n      reject;\n    };\n  };\n  learn off;\n  merge paths off;\n}\n\n", rt.RouterID)
	w("ipv4 table detour;\n\nprotocol pipe detour_pipe {\n  table master4;\n  peer table detour;\n  import none;\n  export filter {\n    if source = RTS_BGP && net ~ LOCAL_REGION then accept;\n    reject;\n  };\n}\n\n")
	w("protocol kernel detour4 {\n  kernel table %d;\n  ipv4 {\n    table detour;\n    import none;\n    export filter { krt_prefsrc = %s; accept; };\n  };\n  learn off;\n}\n\n", DetourTable, rt.RouterID)
	if has6 {
		// IPv6: the same tables. Routes arrive with the IPv4 link address
		// as next hop (the IPv6 channel rides the IPv4 session, RFC 4798
		// IPv4-mapped next hops); the kernel cannot route IPv6 through an
		// IPv4 gateway, so the import filters make them routes through the
		// link's interface, which is point to point.
		prefsrc := ""
		if rt.RouterIPv6.IsValid() {
			prefsrc = fmt.Sprintf("krt_prefsrc = %s; ", rt.RouterIPv6)
		}
		w("protocol kernel kernel6 {\n  ipv6 {\n    import none;\n    export filter {\n      if source = RTS_BGP && !(net ~ LOCAL_REGION6) then { %saccept; }\n      reject;\n    };\n  };\n  learn off;\n  merge paths off;\n}\n\n", prefsrc)
		w("ipv6 table detour_v6;\n\nprotocol pipe detour_pipe6 {\n  table master6;\n  peer table detour_v6;\n  import none;\n  export filter {\n    if source = RTS_BGP && net ~ LOCAL_REGION6 then accept;\n    reject;\n  };\n}\n\n")
		w("protocol kernel detour6 {\n  kernel table %d;\n  ipv6 {\n    table detour_v6;\n    import none;\n    export filter { %saccept; };\n  };\n  learn off;\n}\n\n", DetourTable, prefsrc)
	}
	w("protocol bfd {\n  interface \"%s*\" {\n    min rx interval %d ms;\n    min tx interval %d ms;\n    idle tx interval 1000 ms;\n    multiplier %d;\n  };\n}\n\n",
		"smbb", rt.BFDIntervalMs, rt.BFDIntervalMs, rt.BFDMultiplier)

	// Session templates: fast reconnect after BFD brings a session down.
	w("template bgp mesh {\n  debug { states };\n  local as LOCAL_AS;\n  direct;\n  bfd on;\n  hold time 30;\n  keepalive time 10;\n  connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 10;\n  error forget time 10;\n}\n\n")

	links := slices.Clone(rt.Links)
	slices.SortFunc(links, func(a, b netmap.BackboneLink) int { return strings.Compare(a.Interface, b.Interface) })
	for _, l := range links {
		if !l.Address.Addr().Is4() || !l.PeerAddress.Is4() {
			return nil, fmt.Errorf("link %s: want IPv4 link addresses", l.Interface)
		}
		w("# %s, %s (AS %d)\n", l.Peer, l.PeerRegion, l.PeerASN)
		w("protocol bgp %s from mesh {\n  description \"%s\";\n  source address %s;\n  neighbor %s as %d;\n  interface \"%s\";\n",
			linkProto(l), l.Peer, l.Address.Addr(), l.PeerAddress, l.PeerASN, l.Interface)
		if l.PeerASN == rt.ASN {
			// iBGP: the region's own prefixes (from its designated
			// gateways) and what they learned from other regions.
			w("  ipv4 {\n    next hop self;\n    import filter {\n      if net ~ LOCAL_REGION || net ~ REMOTE then accept;\n      reject;\n    };\n")
			w("    export filter {\n      if net ~ ORIGINATE then accept;\n      if source = RTS_BGP && net ~ REMOTE then accept;\n      reject;\n    };\n  };\n")
			if has6 {
				w("  ipv6 {\n    next hop self;\n    extended next hop on;\n    import filter {\n      if net ~ LOCAL_REGION6 || net ~ REMOTE6 then { ifname = \"%s\"; accept; }\n      reject;\n    };\n", l.Interface)
				w("    export filter {\n      if net ~ ORIGINATE6 then accept;\n      if source = RTS_BGP && net ~ REMOTE6 then accept;\n      reject;\n    };\n  };\n")
			}
			w("}\n\n")
			continue
		}
		w("  ipv4 {\n    import filter {\n      if net ~ REGION_%s then accept;\n      reject;\n    };\n", ident(l.PeerRegion))
		w("    export filter {\n      if net ~ ORIGINATE then accept;\n      if source = RTS_BGP && net ~ LOCAL_REGION then {\n        bgp_path.prepend(LOCAL_AS);\n        bgp_path.prepend(LOCAL_AS);\n        accept;\n      }\n      reject;\n    };\n  };\n")
		if has6 {
			w("  ipv6 {\n    extended next hop on;\n    import filter {\n      if net ~ REGION6_%s then { ifname = \"%s\"; accept; }\n      reject;\n    };\n", ident(l.PeerRegion), l.Interface)
			w("    export filter {\n      if net ~ ORIGINATE6 then accept;\n      if source = RTS_BGP && net ~ LOCAL_REGION6 then {\n        bgp_path.prepend(LOCAL_AS);\n        bgp_path.prepend(LOCAL_AS);\n        accept;\n      }\n      reject;\n    };\n  };\n")
		}
		w("}\n\n")
	}
	for _, x := range rt.External {
		w("# The operator's router %s: the region's prefixes out, nothing in.\n", x.Name)
		w("protocol bgp %s {\n  description \"external %s\";\n  local as LOCAL_AS;\n  neighbor %s as %d;\n", extProto(x), x.Name, x.Address, x.ASN)
		if x.Multihop > 0 {
			w("  multihop %d;\n", x.Multihop)
		}
		if x.Password != "" {
			w("  password \"%s\";\n", x.Password)
		}
		if x.BFD && x.Multihop == 0 {
			w("  bfd on;\n") // (multihop BFD needs a fixed local address: directly connected routers only)
		}
		// The session's own family; over an IPv6 session IPv4 too, with
		// IPv6 next hops (RFC 8950, which routers support). IPv6 over an
		// IPv4 session would need IPv4-mapped next hops, which a Linux
		// router cannot install: the router's IPv6 address is named as a
		// peer of its own for that.
		v6peer := !x.Address.Unmap().Is4()
		if !v6peer || len(v4(rt.Local)) > 0 {
			ext := ""
			if v6peer {
				ext = "    extended next hop on;\n"
			}
			w("  ipv4 {\n%s    import none;\n    export filter {\n      if net ~ LOCAL_REGION && (source = RTS_STATIC || source = RTS_BGP) then accept;\n      reject;\n    };\n  };\n", ext)
		}
		if v6peer && has6 {
			w("  ipv6 {\n    import none;\n    export filter {\n      if net ~ LOCAL_REGION6 && (source = RTS_STATIC || source = RTS_BGP) then accept;\n      reject;\n    };\n  };\n")
		}
		w("}\n\n")
	}
	return []byte(b.String()), nil
}

func v4(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() {
			out = append(out, p)
		}
	}
	return out
}

func v6(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() {
			out = append(out, p)
		}
	}
	return out
}

// prefixSet6 is prefixSet for the IPv6 prefixes; an empty set matches a
// documentation prefix no route has.
func prefixSet6(ps []netip.Prefix) string {
	ps = netmap.SortPrefixes(v6(ps))
	if len(ps) == 0 {
		return "[ 2001:db8::/128 ]"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return "[ " + strings.Join(s, ", ") + " ]"
}

// prefixSet is a BIRD prefix set of the IPv4 prefixes (exact matches);
// an empty set matches a reserved prefix no route has.
func prefixSet(ps []netip.Prefix) string {
	ps = netmap.SortPrefixes(v4(ps))
	if len(ps) == 0 {
		return "[ 0.0.0.0/32 ]"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return "[ " + strings.Join(s, ", ") + " ]"
}

func ident(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, s)
}
