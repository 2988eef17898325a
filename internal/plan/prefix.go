package plan

import (
	"cmp"
	"net/netip"
	"slices"
)

// Prefix arithmetic over IPv4 and IPv6 addresses as 128-bit numbers.

type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	b := a.As16()
	var x u128
	for i := 0; i < 8; i++ {
		x.hi = x.hi<<8 | uint64(b[i])
		x.lo = x.lo<<8 | uint64(b[i+8])
	}
	return x
}

func fromU128(x u128, is4 bool) netip.Addr {
	var b [16]byte
	for i := 7; i >= 0; i-- {
		b[i] = byte(x.hi)
		b[i+8] = byte(x.lo)
		x.hi >>= 8
		x.lo >>= 8
	}
	a := netip.AddrFrom16(b)
	if is4 {
		return a.Unmap()
	}
	return a
}

// add returns x+y and whether it overflowed 128 bits.
func (x u128) add(y u128) (u128, bool) {
	lo := x.lo + y.lo
	var carry uint64
	if lo < x.lo {
		carry = 1
	}
	hi := x.hi + y.hi + carry
	return u128{hi, lo}, hi < x.hi || (carry == 1 && hi == x.hi)
}

func (x u128) sub1() u128 {
	if x.lo == 0 {
		return u128{x.hi - 1, ^uint64(0)}
	}
	return u128{x.hi, x.lo - 1}
}

func (x u128) shl(n int) u128 {
	switch {
	case n == 0:
		return x
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{hi: x.lo << (n - 64)}
	}
	return u128{hi: x.hi<<n | x.lo>>(64-n), lo: x.lo << n}
}

func (x u128) and(y u128) u128    { return u128{x.hi & y.hi, x.lo & y.lo} }
func (x u128) andNot(y u128) u128 { return u128{x.hi &^ y.hi, x.lo &^ y.lo} }
func (x u128) isZero() bool       { return x.hi == 0 && x.lo == 0 }

func (x u128) cmp(y u128) int {
	if c := cmp.Compare(x.hi, y.hi); c != 0 {
		return c
	}
	return cmp.Compare(x.lo, y.lo)
}

// hostBits is the number of host bits of p.
func hostBits(p netip.Prefix) int { return p.Addr().BitLen() - p.Bits() }

// size returns the number of addresses in p as a u128 (2^hostBits).
func size(p netip.Prefix) u128 { return u128{lo: 1}.shl(hostBits(p)) }

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	l, _ := toU128(p.Masked().Addr()).add(size(p).sub1())
	return fromU128(l, p.Addr().Is4())
}

// nth returns the i-th subprefix of length bits inside p.
func nth(p netip.Prefix, bits int, i uint64) netip.Prefix {
	step := p.Addr().BitLen() - bits
	y, _ := toU128(p.Masked().Addr()).add(u128{lo: i}.shl(step))
	return netip.PrefixFrom(fromU128(y, p.Addr().Is4()), bits)
}

// addrAt returns the address at offset i inside p.
func addrAt(p netip.Prefix, i uint64) netip.Addr {
	y, _ := toU128(p.Masked().Addr()).add(u128{lo: i})
	return fromU128(y, p.Addr().Is4())
}

// contains reports whether outer contains inner entirely.
func contains(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// allocAligned finds the first aligned block of prefix length bits inside
// one of supers that overlaps none of used (sorted by address).
func allocAligned(supers []netip.Prefix, bits int, used []netip.Prefix) (netip.Prefix, bool) {
	for _, s := range supers {
		if s.Bits() > bits {
			continue
		}
		is4 := s.Addr().Is4()
		blk := u128{lo: 1}.shl(s.Addr().BitLen() - bits)
		cand := netip.PrefixFrom(s.Masked().Addr(), bits)
		for contains(s, cand) {
			i := slices.IndexFunc(used, func(u netip.Prefix) bool { return u.Overlaps(cand) })
			if i < 0 {
				return cand, true
			}
			// Jump past the conflicting range to the next aligned block.
			next, of := toU128(lastAddr(used[i])).add(u128{lo: 1})
			if of {
				break
			}
			if rem := next.and(blk.sub1()); !rem.isZero() {
				next, of = next.andNot(blk.sub1()).add(blk)
				if of {
					break
				}
			}
			cand = netip.PrefixFrom(fromU128(next, is4), bits)
		}
	}
	return netip.Prefix{}, false
}

// sortPrefixes sorts prefixes by address, then length.
func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
}
