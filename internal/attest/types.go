// Package attest owns TPM attestation: collecting evidence on a node (an EK
// and its certificate, an AK proved to live on the same TPM by credential
// activation, quotes over PCRs bound to the aTLS channel) and verifying it
// on the controller against the mesh's attestation policy.
//
// The protocol (docs/attestation.md):
//
//  1. node → controller: Identity (EK public key and certificate, AK public
//     area), with the join token.
//  2. controller → node: Challenge: a credential encrypted to the EK and
//     bound to the AK's name (only the TPM holding both can open it), a
//     fresh nonce, the PCRs policy requires.
//  3. node → controller: Evidence: the activated secret and a quote by the AK
//     over those PCRs whose extraData is Binding(TLS exporter, nonce,
//     WireGuard public key) — so the evidence belongs to this TLS connection
//     and this node key, and cannot be replayed or relayed.
//  4. re-attestation: a fresh nonce and a new quote by the already trusted AK.
//
// Verification refuses with a specific sentinel error (errors.go) at the
// first failed check; a failed verification is never "weak".
package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"

	"github.com/statemesh/statemesh/internal/atls"
)

// Version of the evidence encoding.
const Version = 1

// Size limits of what a node may send.
const (
	MaxEvidenceBytes = 64 << 10
	MaxEvents        = 1024
	MaxPCR           = 23
)

// Identity is what a node presents first.
type Identity struct {
	Version int `json:"version"`
	// EKPub is the endorsement key's public key (PKIX DER).
	EKPub []byte `json:"ekPub"`
	// EKCert is the EK certificate from the TPM's NV index (DER), if any.
	EKCert []byte `json:"ekCert,omitempty"`
	// AKPub is the attestation key's TPM2B public area.
	AKPub []byte `json:"akPub"`
}

// Challenge is the controller's answer to an Identity.
type Challenge struct {
	Session   string `json:"session"`
	Nonce     []byte `json:"nonce"`
	CredBlob  []byte `json:"credBlob,omitempty"`
	EncSecret []byte `json:"encSecret,omitempty"`
	PCRs      []int  `json:"pcrs"`
}

// Quote is a TPM quote with the PCR values it covers.
type Quote struct {
	// Attest is the TPMS_ATTEST structure the AK signed.
	Attest []byte `json:"attest"`
	// Signature is the TPMT_SIGNATURE over Attest.
	Signature []byte `json:"signature"`
	// PCRs are the SHA-256 bank values, by index.
	PCRs map[int][]byte `json:"pcrs"`
	// EventLog, when given, must replay to the quoted PCRs.
	EventLog []Event `json:"eventLog,omitempty"`
}

// Evidence answers a Challenge.
type Evidence struct {
	Version int    `json:"version"`
	Session string `json:"session"`
	// Secret is the credential the TPM activated (empty on re-attestation).
	Secret []byte `json:"secret,omitempty"`
	Quote  Quote  `json:"quote"`
}

// Event is one measurement of the StateMesh event log.
type Event struct {
	PCR  int    `json:"pcr"`
	Type string `json:"type"`
	// Digest is the SHA-256 digest extended into the PCR.
	Digest []byte `json:"digest"`
	Data   string `json:"data,omitempty"`
}

// decodeStrict decodes JSON with a size bound and no unknown fields.
func decodeStrict(b []byte, v any) error {
	if len(b) > MaxEvidenceBytes {
		return fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, len(b), MaxEvidenceBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	return nil
}

// DecodeIdentity parses and bounds an Identity.
func DecodeIdentity(b []byte) (Identity, error) {
	var id Identity
	if err := decodeStrict(b, &id); err != nil {
		return id, err
	}
	if id.Version != Version {
		return id, fmt.Errorf("%w: identity version %d, want %d", ErrMalformed, id.Version, Version)
	}
	if len(id.EKPub) == 0 || len(id.AKPub) == 0 {
		return id, fmt.Errorf("%w: identity without EK or AK", ErrMalformed)
	}
	return id, nil
}

// DecodeEvidence parses and bounds Evidence.
func DecodeEvidence(b []byte) (Evidence, error) {
	var ev Evidence
	if err := decodeStrict(b, &ev); err != nil {
		return ev, err
	}
	if ev.Version != Version {
		return ev, fmt.Errorf("%w: evidence version %d, want %d", ErrMalformed, ev.Version, Version)
	}
	if len(ev.Quote.Attest) == 0 || len(ev.Quote.Signature) == 0 {
		return ev, fmt.Errorf("%w: evidence without a quote", ErrMalformed)
	}
	if len(ev.Quote.EventLog) > MaxEvents {
		return ev, fmt.Errorf("%w: %d events (limit %d)", ErrTooLarge, len(ev.Quote.EventLog), MaxEvents)
	}
	for i, v := range ev.Quote.PCRs {
		if i < 0 || i > MaxPCR || len(v) != sha256.Size {
			return ev, fmt.Errorf("%w: PCR %d with a %d-byte value (want SHA-256)", ErrMalformed, i, len(v))
		}
	}
	return ev, nil
}

// Encode marshals any of the protocol's messages.
func Encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // plain structs
	}
	return b
}

// Binding is atls.Binding: the quote's extraData.
func Binding(exporter, nonce, wgPub []byte) []byte { return atls.Binding(exporter, nonce, wgPub) }
