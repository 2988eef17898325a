package netmap

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// KeyLen is the length in bytes of a WireGuard key.
const KeyLen = 32

// Key is a WireGuard Curve25519 key (public or private). Its text form is
// standard base64, the form `wg` prints.
type Key [KeyLen]byte

// ParseKey decodes a base64 WireGuard key.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("invalid WireGuard key %q: %w", s, err)
	}
	if len(b) != KeyLen {
		return k, fmt.Errorf("invalid WireGuard key %q: %d bytes, want %d", s, len(b), KeyLen)
	}
	copy(k[:], b)
	return k, nil
}

// GeneratePrivateKey returns a new clamped Curve25519 private key.
func GeneratePrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generating private key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// PublicKey derives the public key of a private key.
func (k Key) PublicKey() Key {
	var pub Key
	out, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		// X25519 fails only for low-order points, which a clamped
		// private key with the base point cannot produce.
		panic(fmt.Sprintf("netmap: deriving public key: %v", err))
	}
	copy(pub[:], out)
	return pub
}

// IsZero reports whether the key is all zeroes (unset).
func (k Key) IsZero() bool { return k == Key{} }

// String returns the base64 form.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// MarshalText implements encoding.TextMarshaler.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Key) UnmarshalText(b []byte) error {
	p, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// fieldPrime is 2^255-19, little-endian: the Curve25519 field's modulus.
var fieldPrime = Key{0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}

// lowOrderProbe is any clamped scalar: X25519 with it yields all zeroes
// exactly for the points of small order (on the curve or its twist).
var lowOrderProbe = Key{0x48, 9: 0x5a, 20: 0x13, 31: 0x40}

// CheckPublicKey refuses a WireGuard public key that can only be a
// mistake or an attack: zero, a point of small order (every peer would
// derive the same all-zero shared secret), or a non-canonical encoding (the
// top bit set, or a coordinate ≥ 2^255-19: X25519 reads such a key as
// another one, so two spellings would name one peer). A key made by
// Curve25519 from a private key always passes.
func CheckPublicKey(k Key) error {
	if k.IsZero() {
		return fmt.Errorf("the WireGuard public key is all zeroes")
	}
	if k[KeyLen-1]&0x80 != 0 || !lessLE(k, fieldPrime) {
		return fmt.Errorf("the WireGuard public key %s is not in canonical form (it names the same peer as another encoding)", k)
	}
	if _, err := curve25519.X25519(lowOrderProbe[:], k[:]); err != nil {
		return fmt.Errorf("the WireGuard public key %s is a point of small order, not a key", k)
	}
	return nil
}

// lessLE reports a < b for little-endian 256-bit numbers.
func lessLE(a, b Key) bool {
	for i := KeyLen - 1; i >= 0; i-- {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}
