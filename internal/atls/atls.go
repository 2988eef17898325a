// Package atls is StateMesh's attested TLS: TLS 1.3 without session
// resumption, and the binding that ties attestation evidence to one TLS
// connection. Both ends derive the same exporter value (RFC 8446 §7.5) from
// the connection's secrets; evidence whose quote covers
// Binding(exporter, nonce, WireGuard key) was produced for this connection,
// this challenge and this key, so it cannot be replayed from an earlier
// session nor relayed onto another connection. See docs/attestation.md.
package atls

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
)

// ExporterLabel is the TLS exporter label of the binding.
const ExporterLabel = "EXPORTER-statemesh-attestation"

// ErrNotTLS13 is returned for a connection that cannot carry the binding.
var ErrNotTLS13 = errors.New("attested TLS needs a TLS 1.3 connection")

// Exporter returns the connection's 32-byte exporter value.
func Exporter(cs *tls.ConnectionState) ([]byte, error) {
	if cs == nil || !cs.HandshakeComplete {
		return nil, fmt.Errorf("%w: no completed handshake", ErrNotTLS13)
	}
	if cs.Version != tls.VersionTLS13 {
		return nil, fmt.Errorf("%w: version %#x", ErrNotTLS13, cs.Version)
	}
	return cs.ExportKeyingMaterial(ExporterLabel, nil, 32)
}

// Binding is the value attestation evidence must cover (a quote's
// extraData): SHA-256 over a domain label and the length-prefixed
// exporter, nonce and WireGuard public key.
func Binding(exporter, nonce, wgPub []byte) []byte {
	h := sha256.New()
	h.Write([]byte("statemesh-attestation-v1\x00"))
	for _, part := range [][]byte{exporter, nonce, wgPub} {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(part)))
		h.Write(l[:])
		h.Write(part)
	}
	return h.Sum(nil)
}

// Harden sets what attested TLS requires on a configuration: TLS 1.3 only
// and no session resumption (a resumed session would let a client skip the
// handshake whose secrets the binding covers).
func Harden(c *tls.Config) *tls.Config {
	c.MinVersion = tls.VersionTLS13
	c.SessionTicketsDisabled = true
	c.ClientSessionCache = nil
	return c
}
