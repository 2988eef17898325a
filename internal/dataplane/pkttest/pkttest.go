// Package pkttest builds packets for the data-plane packages' tests: Ethernet
// frames holding IPv4 or IPv6, TCP or UDP, and WireGuard-shaped payloads.
package pkttest

import (
	"encoding/binary"
	"net/netip"
)

// Frames for BPF_PROG_TEST_RUN: Ethernet, IPv4 or IPv6, TCP or UDP, with
// checksums left zero (XDP runs before anyone checks them).

func Ether(ethertype uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(b[12:], ethertype)
	return append(b, payload...)
}

func IPPacket(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	if src.Is4() {
		h := make([]byte, 20, 20+len(l4))
		h[0], h[8], h[9] = 0x45, 64, proto
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		s, d := src.As4(), dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		return Ether(0x0800, append(h, l4...))
	}
	h := make([]byte, 40, 40+len(l4))
	h[0], h[6], h[7] = 0x60, proto, 64
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return Ether(0x86dd, append(h, l4...))
}

func UDP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	return IPPacket(src, dst, 17, append(u, payload...))
}

// TCP flags.
const (
	TCPSYN = 0x02
	TCPACK = 0x10
)

func TCP(src, dst netip.Addr, sport, dport uint16, flags uint8) []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	t[12], t[13] = 5<<4, flags
	return IPPacket(src, dst, 6, t)
}

// handshakeInitiation is shaped like a WireGuard handshake initiation
// (type 1, 148 bytes); its contents are junk.
func HandshakeInitiation() []byte {
	b := make([]byte, 148)
	b[0] = 1
	for i := 4; i < len(b); i++ {
		b[i] = byte(i * 7)
	}
	return b
}

// transportData is shaped like WireGuard transport data (type 4).
func TransportData() []byte {
	b := make([]byte, 64)
	b[0] = 4
	return b
}
