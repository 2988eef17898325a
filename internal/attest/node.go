package attest

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// Attester collects evidence from the node's TPM.
type Attester struct {
	rw io.ReadWriteCloser
	ek *client.Key
	ak *client.Key
}

// NewAttester loads the TPM's endorsement key (RSA, else ECC) with its
// certificate from NV storage, and an ECC attestation key: a restricted
// signing key created on the TPM.
func NewAttester(rw io.ReadWriteCloser) (*Attester, error) {
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		ek, err = client.EndorsementKeyECC(rw)
		if err != nil {
			return nil, fmt.Errorf("loading the endorsement key: %w", err)
		}
	}
	ak, err := client.AttestationKeyECC(rw)
	if err != nil {
		ek.Close()
		return nil, fmt.Errorf("creating the attestation key: %w", err)
	}
	return &Attester{rw: rw, ek: ek, ak: ak}, nil
}

// Close flushes the keys and closes the TPM.
func (a *Attester) Close() error {
	a.ak.Close()
	a.ek.Close()
	return a.rw.Close()
}

// TPM returns the open TPM (for sealing and tests).
func (a *Attester) TPM() io.ReadWriter { return a.rw }

// Identity returns the EK (and certificate) and the AK's public area.
func (a *Attester) Identity() (Identity, error) {
	ekDER, err := x509.MarshalPKIXPublicKey(a.ek.PublicKey())
	if err != nil {
		return Identity{}, err
	}
	akPub, err := a.ak.PublicArea().Encode()
	if err != nil {
		return Identity{}, err
	}
	return Identity{Version: Version, EKPub: ekDER, EKCert: a.ek.CertDERBytes(), AKPub: akPub}, nil
}

// Activate opens the controller's credential: only possible when the AK
// named in it is loaded on the TPM that holds the EK it was encrypted to.
func (a *Attester) Activate(ch Challenge) ([]byte, error) {
	sess, err := client.NewEKSession(a.rw)
	if err != nil {
		return nil, fmt.Errorf("starting the EK policy session: %w", err)
	}
	defer sess.Close()
	ekAuth, err := sess.Auth()
	if err != nil {
		return nil, err
	}
	akAuth := tpm2.AuthCommand{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession}
	// The credential and secret arrive as TPM2B structures (size-prefixed);
	// the command takes their contents.
	if len(ch.CredBlob) < 2 || len(ch.EncSecret) < 2 {
		return nil, fmt.Errorf("%w: challenge without a credential", ErrMalformed)
	}
	secret, err := tpm2.ActivateCredentialUsingAuth(a.rw, []tpm2.AuthCommand{akAuth, ekAuth}, a.ak.Handle(), a.ek.Handle(), ch.CredBlob[2:], ch.EncSecret[2:])
	if err != nil {
		return nil, fmt.Errorf("activating the credential: %w", err)
	}
	return secret, nil
}

// Quote quotes the SHA-256 bank of pcrs with extraData, and attaches the
// values and the event log.
func (a *Attester) Quote(pcrs []int, extraData []byte, log []Event) (Quote, error) {
	sel := tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: slices.Clone(pcrs)}
	q, err := a.ak.Quote(sel, extraData)
	if err != nil {
		return Quote{}, fmt.Errorf("quoting PCRs %v: %w", pcrs, err)
	}
	out := Quote{Attest: q.GetQuote(), Signature: q.GetRawSig(), PCRs: map[int][]byte{}, EventLog: log}
	for i, v := range q.GetPcrs().GetPcrs() {
		out.PCRs[int(i)] = v
	}
	return out, nil
}

// Respond answers a challenge: activation (when the challenge carries a
// credential) and a quote bound to the connection, nonce and WireGuard key.
func (a *Attester) Respond(ch Challenge, exporter, wgPub []byte, log []Event) (Evidence, error) {
	ev := Evidence{Version: Version, Session: ch.Session}
	if len(ch.CredBlob) > 0 {
		s, err := a.Activate(ch)
		if err != nil {
			return ev, err
		}
		ev.Secret = s
	}
	q, err := a.Quote(ch.PCRs, Binding(exporter, ch.Nonce, wgPub), log)
	if err != nil {
		return ev, err
	}
	ev.Quote = q
	return ev, nil
}

// ExtendPCR extends a SHA-256 PCR with the digest of data (tamper
// simulation, and the agent's own measurements).
func ExtendPCR(rw io.ReadWriter, pcr int, data []byte) error {
	if pcr < 0 || pcr > MaxPCR {
		return errors.New("PCR index out of range")
	}
	d := sha256.Sum256(data)
	return tpm2.PCRExtend(rw, tpmutil.Handle(pcr), tpm2.AlgSHA256, d[:], "")
}

// ReadPCR reads a SHA-256 PCR.
func ReadPCR(rw io.ReadWriter, pcr int) ([]byte, error) {
	return tpm2.ReadPCR(rw, pcr, tpm2.AlgSHA256)
}
