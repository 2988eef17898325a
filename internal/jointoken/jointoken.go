// Package jointoken is the join token's wire form, which the controller
// issues and agents present: "smt1.<id>.<secret>.<ca-pin>". The agent
// finds nothing secret in it but the secret; the pin lets it trust the
// controller's CA before it has the CA. Both ends import this package, so
// the agent needs nothing of the controller's implementation.
package jointoken

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"
)

// Prefix starts every join token (its format version).
const Prefix = "smt1"

// Token is a parsed join token.
type Token struct {
	ID, Secret, CAPin string
}

// Parse splits a join token string.
func Parse(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 || parts[0] != Prefix || parts[1] == "" || parts[2] == "" || parts[3] == "" {
		return Token{}, errors.New("not a StateMesh join token (smt1.<id>.<secret>.<ca-pin>)")
	}
	return Token{ID: parts[1], Secret: parts[2], CAPin: parts[3]}, nil
}

// String is the token's wire form.
func (t Token) String() string {
	return strings.Join([]string{Prefix, t.ID, t.Secret, t.CAPin}, ".")
}

// CAPin is the pin of a CA certificate that join tokens carry:
// base64url(SHA-256 of its SubjectPublicKeyInfo).
func CAPin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
