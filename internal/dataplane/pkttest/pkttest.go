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

// HandshakeInitiation is shaped like a WireGuard handshake initiation
// (type 1, 148 bytes); its contents are junk.
func HandshakeInitiation() []byte {
	b := make([]byte, 148)
	b[0] = 1
	for i := 4; i < len(b); i++ {
		b[i] = byte(i * 7)
	}
	return b
}

// TransportData is shaped like WireGuard transport data (type 4).
func TransportData() []byte {
	b := make([]byte, 64)
	b[0] = 4
	return b
}

// HandshakeResponse is shaped like a WireGuard handshake response (type 2,
// 92 bytes).
func HandshakeResponse() []byte {
	b := make([]byte, 92)
	b[0] = 2
	return b
}

// Datagram is an Ethernet frame carrying a UDP datagram from src to dst,
// with every checksum a receiving stack verifies filled in (the IPv4
// header's; UDP's, which IPv6 requires), so that it is delivered, not only
// seen by XDP.
func Datagram(srcMAC, dstMAC [6]byte, src, dst netip.AddrPort, payload []byte) []byte {
	f := UDP(src.Addr(), dst.Addr(), src.Port(), dst.Port(), payload)
	copy(f[0:6], dstMAC[:])
	copy(f[6:12], srcMAC[:])
	ip := f[14:]
	var l4 []byte
	var pseudo uint32
	if src.Addr().Is4() {
		binary.BigEndian.PutUint16(ip[10:], checksum(ip[:20], 0))
		l4 = ip[20:]
		pseudo = sum(ip[12:20], 0) + 17 + uint32(len(l4))
	} else {
		l4 = ip[40:]
		pseudo = sum(ip[8:40], 0) + 17 + uint32(len(l4))
	}
	c := checksum(l4, pseudo)
	if c == 0 {
		c = 0xffff // zero means "no checksum" to UDP
	}
	binary.BigEndian.PutUint16(l4[6:], c)
	return f
}

// sum adds b as big-endian 16-bit words to acc (RFC 1071).
func sum(b []byte, acc uint32) uint32 {
	for len(b) >= 2 {
		acc += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

// checksum is the Internet checksum of b over the partial sum acc.
func checksum(b []byte, acc uint32) uint16 {
	acc = sum(b, acc)
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}
