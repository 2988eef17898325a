package attest

import "errors"

// Verification failures. Each names the check that refused the evidence;
// the controller reports it as the reason of an attestation_failed error
// and in its audit log.
var (
	ErrMalformed        = errors.New("malformed evidence")
	ErrTooLarge         = errors.New("evidence too large")
	ErrEKUntrusted      = errors.New("EK certificate does not chain to an accepted root and the EK is not on the allow-list")
	ErrEKMismatch       = errors.New("EK public key differs from the EK certificate's key")
	ErrAKAttributes     = errors.New("AK is not a restricted, fixed, TPM-generated signing key")
	ErrActivation       = errors.New("credential activation failed: the AK is not on the TPM that holds the EK")
	ErrSession          = errors.New("unknown, used or expired attestation session")
	ErrBinding          = errors.New("evidence is not bound to this TLS connection, nonce and WireGuard key")
	ErrSignature        = errors.New("quote signature does not verify with the AK")
	ErrPCRSelection     = errors.New("quote does not cover every PCR the policy requires")
	ErrPCRDigest        = errors.New("quoted PCR digest does not match the reported PCR values")
	ErrPCRValue         = errors.New("PCR value differs from the policy's reference")
	ErrSHA1Only         = errors.New("only a SHA-1 PCR bank is available; SHA-256 is required")
	ErrEventLogReplay   = errors.New("event log does not replay to the quoted PCR values")
	ErrUnknownEventType = errors.New("event log holds an unknown event type")
	ErrNoTPM            = errors.New("node has no TPM evidence")
)
