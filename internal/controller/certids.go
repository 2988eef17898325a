package controller

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
)

// CertSerial is a node certificate's serial number (the CA draws 127
// random bits), kept as 16 big-endian bytes inside the node's record
// rather than as its text: a million records save the string and its
// header. Its text form is what it always was, the number in lower-case
// hex without leading zeros (big.Int's Text(16)), so stored records and
// the API are unchanged.
type CertSerial [16]byte

// SerialOf returns n as a CertSerial; numbers that are negative or need
// more than 128 bits are refused.
func SerialOf(n *big.Int) (CertSerial, error) {
	var s CertSerial
	if n.Sign() < 0 || n.BitLen() > 8*len(s) {
		return s, fmt.Errorf("certificate serial %s does not fit in %d bits", n.Text(16), 8*len(s))
	}
	n.FillBytes(s[:])
	return s, nil
}

// ParseCertSerial reads a serial's text form (hex, as Text(16) writes it;
// upper case and leading zeros are accepted).
func ParseCertSerial(text string) (CertSerial, error) {
	n, ok := new(big.Int).SetString(text, 16)
	if !ok || text == "" || text[0] == '-' || text[0] == '+' {
		return CertSerial{}, fmt.Errorf("certificate serial %q is not a hexadecimal number", text)
	}
	return SerialOf(n)
}

// IsZero reports an unset serial (the CA never issues 0).
func (s CertSerial) IsZero() bool { return s == CertSerial{} }

func (s CertSerial) String() string { return new(big.Int).SetBytes(s[:]).Text(16) }

// MarshalText writes the hex number.
func (s CertSerial) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads the hex number; an empty text is the zero serial.
func (s *CertSerial) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = CertSerial{}
		return nil
	}
	v, err := ParseCertSerial(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// KeyDigest is a SHA-256 sum (of a certificate's public key) kept as its
// 32 bytes; its text form is 64 lower-case hex digits.
type KeyDigest [32]byte

// IsZero reports an unset digest.
func (d KeyDigest) IsZero() bool { return d == KeyDigest{} }

func (d KeyDigest) String() string {
	if d.IsZero() {
		return ""
	}
	return hex.EncodeToString(d[:])
}

// MarshalText writes the hex digest (nothing for the zero digest).
func (d KeyDigest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

var errKeyDigest = errors.New("key digest is not 64 hexadecimal digits")

// UnmarshalText reads 64 hex digits; an empty text is the zero digest.
func (d *KeyDigest) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*d = KeyDigest{}
		return nil
	}
	var v KeyDigest
	if len(b) != 2*len(v) {
		return errKeyDigest
	}
	if _, err := hex.Decode(v[:], b); err != nil {
		return errKeyDigest
	}
	*d = v
	return nil
}
