package policy

import (
	"net/netip"
	"slices"

	"github.com/statemesh/statemesh/internal/spec"
)

// MaxClientSegments is how many clients segments a mesh may have: each
// region's clients range is cut into this many blocks, one per segment, so
// that a client's address says its segment (Cilium matches clients by
// CIDR).
const MaxClientSegments = spec.MaxClientSegments

// ClientSegments lists the segments external clients can be put in,
// sorted; a segment's index in it is its block in each region's clients
// range.
func (p *Policy) ClientSegments() []string {
	if p == nil {
		return nil
	}
	var out []string
	for _, n := range p.names {
		if p.segments[n].Clients {
			out = append(out, n)
		}
	}
	return out
}

// ClientBlock returns the block of a region's clients range that holds
// the clients of a segment, or false when the segment takes no clients.
func (p *Policy) ClientBlock(clients netip.Prefix, segment string) (netip.Prefix, bool) {
	i := slices.Index(p.ClientSegments(), segment)
	if i < 0 || !clients.IsValid() {
		return netip.Prefix{}, false
	}
	return Block(clients, i), true
}

// Block returns the i-th of the MaxClientSegments equal blocks of r.
func Block(r netip.Prefix, i int) netip.Prefix {
	const bits = 4 // log2(MaxClientSegments)
	r = r.Masked()
	b := r.Addr().As16()
	off := 16 - r.Addr().BitLen()/8 // IPv4 addresses live in the last 4 bytes
	// Set the 4 bits right after the prefix to i.
	for k := 0; k < bits; k++ {
		pos := r.Bits() + k
		if i&(1<<(bits-1-k)) != 0 {
			b[off+pos/8] |= 0x80 >> (pos % 8)
		}
	}
	a := netip.AddrFrom16(b)
	if r.Addr().Is4() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, r.Bits()+bits)
}
