// Package pathprobe measures the paths from a node to its gateways (and,
// from a gateway, to the other regions' gateways) through the overlay:
// round-trip time and loss with small ICMP (or ICMPv6) echoes, and the
// path MTU with echoes that may not be fragmented (DF; IPv6 is never
// fragmented on the way), searched between the family's minimum and the
// interface MTU. A WAN link whose MTU is smaller than the
// plan assumed shows up as a path MTU below the interface's: WireGuard's
// encapsulated packets of full size are dropped on the way.
//
// The search is pure (Search); Prober sends the packets.
package pathprobe

import "time"

// Result is one path's measurement.
type Result struct {
	Peer    string
	Region  string
	RTT     time.Duration // median of the answered small echoes; 0 if none
	Loss    float64       // of the small echoes, 0..1
	PathMTU int           // largest packet (IP) that crossed; 0 when unknown
	Planned int           // the interface MTU (what the plan expects)
}

// MinMTU and MinMTU6 are the smallest MTUs an IPv4 and an IPv6 path must
// carry (RFC 791, RFC 8200).
const (
	MinMTU  = 576
	MinMTU6 = 1280
)

// Search returns the largest packet size in [lo, hi] for which ok
// returns true, assuming ok is monotone (true up to the path MTU, false
// above), or 0 when even lo fails. It calls ok O(log(hi-lo)) times and
// first tries hi, the common case.
func Search(lo, hi int, ok func(size int) bool) int {
	if hi < lo {
		return 0
	}
	if ok(hi) {
		return hi
	}
	if !ok(lo) {
		return 0
	}
	// Invariant: ok(lo), !ok(hi).
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if ok(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}
