package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	pb "github.com/google/go-tpm-tools/proto/tpm"
	tpmquote "github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/legacy/tpm2/credactivation"
)

// Policy is what the controller accepts.
type Policy struct {
	// Roots are the accepted EK certificate authorities.
	Roots *x509.CertPool
	// Intermediates may complete EK certificate chains.
	Intermediates *x509.CertPool
	// EKAllowList holds SHA-256 digests (hex) of PKIX EK public keys that
	// are accepted without a certificate (vTPMs).
	EKAllowList map[string]bool
	// PCRs must all be covered by every quote (SHA-256 bank).
	PCRs []int
	// Reference maps a PCR to its accepted values; PCRs not in it may hold
	// anything.
	Reference map[int][][]byte
	// Now is the clock for certificate validity (default time.Now).
	Now func() time.Time
}

// EKDigest is the allow-list form of an EK public key.
func EKDigest(pkix []byte) string {
	s := sha256.Sum256(pkix)
	return hex.EncodeToString(s[:])
}

// Checked is what CheckIdentity established about a node's TPM.
type Checked struct {
	EKPub  crypto.PublicKey
	EKHash string
	AKPub  crypto.PublicKey
	AKName *tpm2.HashValue
	// AKArea is the AK's encoded public area (kept by the controller for
	// re-attestation).
	AKArea []byte
}

// requiredAK are the attributes an attestation key must have.
const requiredAK = tpm2.FlagSign | tpm2.FlagRestricted | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin

// CheckIdentity checks the EK (certificate chain or allow-list, and that
// the certificate's key is the EK) and the AK's attributes.
func (p Policy) CheckIdentity(id Identity) (Checked, error) {
	var c Checked
	ekPub, err := x509.ParsePKIXPublicKey(id.EKPub)
	if err != nil {
		return c, fmt.Errorf("%w: EK public key: %v", ErrMalformed, err)
	}
	c.EKPub, c.EKHash = ekPub, EKDigest(id.EKPub)
	trusted := false
	if len(id.EKCert) > 0 {
		cert, err := parseEKCert(id.EKCert)
		if err != nil {
			return c, fmt.Errorf("%w: EK certificate: %v", ErrMalformed, err)
		}
		certKey, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
		if err != nil || !bytes.Equal(certKey, id.EKPub) {
			return c, ErrEKMismatch
		}
		if p.Roots != nil {
			now := time.Now()
			if p.Now != nil {
				now = p.Now()
			}
			_, err := cert.Verify(x509.VerifyOptions{Roots: p.Roots, Intermediates: p.Intermediates, CurrentTime: now,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if err == nil {
				trusted = true
			} else if !p.EKAllowList[c.EKHash] {
				return c, fmt.Errorf("%w: %v", ErrEKUntrusted, err)
			}
		}
	}
	if !trusted && !p.EKAllowList[c.EKHash] {
		return c, ErrEKUntrusted
	}
	ak, err := tpm2.DecodePublic(id.AKPub)
	if err != nil {
		return c, fmt.Errorf("%w: AK public area: %v", ErrMalformed, err)
	}
	if ak.Attributes&requiredAK != requiredAK || ak.Attributes&tpm2.FlagDecrypt != 0 {
		return c, fmt.Errorf("%w (attributes %#x)", ErrAKAttributes, uint32(ak.Attributes))
	}
	if ak.NameAlg != tpm2.AlgSHA256 {
		return c, fmt.Errorf("%w: name algorithm %v, want SHA-256", ErrAKAttributes, ak.NameAlg)
	}
	c.AKPub, err = ak.Key()
	if err != nil {
		return c, fmt.Errorf("%w: AK key: %v", ErrMalformed, err)
	}
	name, err := ak.Name()
	if err != nil || name.Digest == nil {
		return c, fmt.Errorf("%w: AK name: %v", ErrMalformed, err)
	}
	c.AKName, c.AKArea = name.Digest, id.AKPub
	return c, nil
}

// oidSAN is the subject alternative name extension. TCG EK certificates
// mark it critical and fill it with a directoryName of TPM manufacturer
// attributes that Go's x509 does not interpret.
var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// parseEKCert parses an EK certificate. The TCG subject alternative name is
// accepted as understood; any other unhandled critical extension still
// fails verification.
func parseEKCert(der []byte) (*x509.Certificate, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	cert.UnhandledCriticalExtensions = slices.DeleteFunc(cert.UnhandledCriticalExtensions, func(o asn1.ObjectIdentifier) bool { return o.Equal(oidSAN) })
	return cert, nil
}

// NewChallenge makes a challenge for a checked identity: a fresh nonce and,
// when activate is set, a 32-byte secret encrypted to the EK for the AK's
// name. It returns the secret for the caller to keep (hashed) until the
// evidence arrives.
func (p Policy) NewChallenge(c Checked, session string, activate bool) (Challenge, []byte, error) {
	ch := Challenge{Session: session, Nonce: make([]byte, 32), PCRs: slices.Clone(p.PCRs)}
	if _, err := rand.Read(ch.Nonce); err != nil {
		return ch, nil, err
	}
	if !activate {
		return ch, nil, nil
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return ch, nil, err
	}
	symBlock := 16 // the default EK templates use AES-128
	var err error
	ch.CredBlob, ch.EncSecret, err = credactivation.Generate(c.AKName, c.EKPub, symBlock, secret)
	if err != nil {
		return ch, nil, fmt.Errorf("making the credential: %w", err)
	}
	return ch, secret, nil
}

// CheckSecret compares the activated secret with the expected one's SHA-256
// in constant time.
func CheckSecret(wantHash, got []byte) error {
	h := sha256.Sum256(got)
	if len(got) == 0 || subtle.ConstantTimeCompare(wantHash, h[:]) != 1 {
		return ErrActivation
	}
	return nil
}

// VerifyQuote checks a quote by the AK: signature, extraData (the binding),
// PCR selection ⊇ policy, SHA-256 bank, digest of the reported values,
// reference values, and the event log's replay.
func (p Policy) VerifyQuote(akPub crypto.PublicKey, q Quote, extraData []byte) error {
	switch akPub.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey:
	default:
		return fmt.Errorf("%w: AK key type %T", ErrMalformed, akPub)
	}
	att, err := tpm2.DecodeAttestationData(q.Attest)
	if err != nil {
		return fmt.Errorf("%w: attestation data: %v", ErrMalformed, err)
	}
	if att.Type != tpm2.TagAttestQuote || att.AttestedQuoteInfo == nil {
		return fmt.Errorf("%w: not a quote", ErrMalformed)
	}
	sel := att.AttestedQuoteInfo.PCRSelection
	if sel.Hash != tpm2.AlgSHA256 {
		if sel.Hash == tpm2.AlgSHA1 {
			return ErrSHA1Only
		}
		return fmt.Errorf("%w: bank %v", ErrPCRSelection, sel.Hash)
	}
	for _, want := range p.PCRs {
		if !slices.Contains(sel.PCRs, want) {
			return fmt.Errorf("%w: PCR %d missing from %v", ErrPCRSelection, want, sel.PCRs)
		}
	}
	// The reported values must be exactly the quoted selection.
	pcrs := &pb.PCRs{Hash: pb.HashAlgo_SHA256, Pcrs: map[uint32][]byte{}}
	for i, v := range q.PCRs {
		pcrs.Pcrs[uint32(i)] = v
	}
	if len(q.PCRs) != len(sel.PCRs) {
		return fmt.Errorf("%w: %d values for %d quoted PCRs", ErrPCRDigest, len(q.PCRs), len(sel.PCRs))
	}
	if subtle.ConstantTimeCompare(att.ExtraData, extraData) != 1 {
		return ErrBinding
	}
	idx := slices.Clone(sel.PCRs)
	slices.Sort(idx)
	h := sha256.New()
	for _, i := range idx {
		v, ok := q.PCRs[i]
		if !ok {
			return fmt.Errorf("%w: no value for quoted PCR %d", ErrPCRDigest, i)
		}
		h.Write(v)
	}
	if subtle.ConstantTimeCompare(h.Sum(nil), att.AttestedQuoteInfo.PCRDigest) != 1 {
		return ErrPCRDigest
	}
	// Binding and digest are checked: what is left is the signature.
	pq := &pb.Quote{Quote: q.Attest, RawSig: q.Signature, Pcrs: pcrs}
	if err := tpmquote.Verify(pq, akPub, extraData); err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	for i, accepted := range p.Reference {
		v, ok := q.PCRs[i]
		if !ok {
			return fmt.Errorf("%w: PCR %d has a reference value but was not quoted", ErrPCRSelection, i)
		}
		if !slices.ContainsFunc(accepted, func(a []byte) bool { return bytes.Equal(a, v) }) {
			return fmt.Errorf("%w: PCR %d is %x", ErrPCRValue, i, v)
		}
	}
	if len(q.EventLog) > 0 {
		if err := Replay(q.EventLog, q.PCRs); err != nil {
			return err
		}
	}
	return nil
}
