package apiclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/jointoken"
)

// Identity is what a node holds after enrollment: its client certificate
// and key (for the control channel; not its WireGuard key) and the CA.
type Identity struct {
	Server   string   `json:"server"`
	Node     api.Node `json:"node"`
	CA       string   `json:"ca"`
	CertPEM  string   `json:"cert"`
	KeyPEM   string   `json:"key"`
	Revision int64    `json:"revision"`
	// ReattestInterval is how often a strong node re-attests.
	ReattestInterval time.Duration `json:"reattestInterval,omitempty"`
}

// Attester answers attestation challenges for Enroll (package attest's
// Attester, through a small interface so this package needs no TPM).
type Attester interface {
	// Identity returns the TPM identity (attest.Identity as JSON).
	Identity() ([]byte, error)
	// Respond answers a challenge (attest.Challenge as JSON) with evidence
	// (attest.Evidence as JSON) bound to exporter and the WireGuard key.
	Respond(challenge, exporter, wgPub []byte) ([]byte, error)
}

// Enroll enrolls a node: it makes a fresh key and certificate request,
// pins the controller's CA from the join token, and sends req (whose CSR
// and Token it fills in).
func Enroll(ctx context.Context, server, token string, req api.EnrollRequest) (*Identity, error) {
	return EnrollAttested(ctx, server, token, req, nil)
}

// EnrollAttested enrolls with TPM evidence when att is not nil: it opens
// an attestation session, then sends the enrollment with evidence bound
// to the TLS connection that carries it. It makes a fresh certificate key.
func EnrollAttested(ctx context.Context, server, token string, req api.EnrollRequest, att Attester) (*Identity, error) {
	keyPEM, err := NewNodeKey()
	if err != nil {
		return nil, err
	}
	return EnrollWithKey(ctx, server, token, req, att, keyPEM)
}

// NewNodeKey makes a key for a node's client certificate (PKCS#8 PEM).
func NewNodeKey() (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}

// EnrollWithKey is EnrollAttested with the certificate key given (PKCS#8
// PEM). An agent that retries an enrollment whose answer it lost must
// retry with the same key: the controller takes the request signed with
// it as the proof that the retry comes from the node it enrolled.
func EnrollWithKey(ctx context.Context, server, token string, req api.EnrollRequest, att Attester, keyPEM string) (*Identity, error) {
	tok, err := jointoken.Parse(token)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode([]byte(keyPEM))
	if blk == nil {
		return nil, errors.New("the enrollment key is not PEM")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("the enrollment key: %w", err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("the enrollment key is not an ECDSA key")
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: req.Name}}, key)
	if err != nil {
		return nil, err
	}
	req.Token = token
	req.CSR = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))
	c, err := NewPinned(server, tok.CAPin)
	if err != nil {
		return nil, err
	}
	defer c.CloseIdle()
	var resp api.EnrollResponse
	var interval time.Duration
	if att == nil {
		resp, err = c.Enroll(ctx, req)
	} else {
		idJSON, ierr := att.Identity()
		if ierr != nil {
			return nil, fmt.Errorf("reading the TPM identity: %w", ierr)
		}
		ch, cerr := c.AttestChallenge(ctx, token, idJSON)
		if cerr != nil {
			return nil, cerr
		}
		interval = time.Duration(ch.ReattestInterval) * time.Second
		err = c.PostBound(ctx, "/v1/enroll", func(exp []byte) (any, error) {
			ev, err := att.Respond(ch.Challenge, exp, req.PublicKey[:])
			if err != nil {
				return nil, fmt.Errorf("answering the attestation challenge: %w", err)
			}
			r := req
			r.Evidence = ev
			return r, nil
		}, &resp)
	}
	if err != nil {
		return nil, err
	}
	return &Identity{
		Server: server, Node: resp.Node, CA: resp.CA, CertPEM: resp.Certificate,
		KeyPEM:   keyPEM,
		Revision: resp.Revision, ReattestInterval: interval,
	}, nil
}

// Client returns a client authenticated as the node.
func (id *Identity) Client() (*Client, error) {
	cert, err := tls.X509KeyPair([]byte(id.CertPEM), []byte(id.KeyPEM))
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	return NewNode(id.Server, id.CA, cert)
}

// newKeyAndCSR makes a node key and a certificate request for it.
func newKeyAndCSR(name string) (keyPEM, csrPEM string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})), nil
}

// Expiry returns when the identity's certificate expires.
func (id *Identity) Expiry() (time.Time, error) {
	blk, _ := pem.Decode([]byte(id.CertPEM))
	if blk == nil {
		return time.Time{}, errors.New("identity holds no certificate")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return time.Time{}, err
	}
	return c.NotAfter, nil
}

// Renew gets a new certificate for a new key and returns the renewed
// identity; the caller persists it.
func (id *Identity) Renew(ctx context.Context) (*Identity, error) {
	c, err := id.Client()
	if err != nil {
		return nil, err
	}
	defer c.CloseIdle()
	keyPEM, csrPEM, err := newKeyAndCSR(id.Node.Name)
	if err != nil {
		return nil, err
	}
	var resp api.RenewResponse
	if err := c.jsonCall(ctx, http.MethodPost, "/v1/node/renew", api.RenewRequest{CSR: csrPEM}, &resp); err != nil {
		return nil, err
	}
	out := *id
	out.CertPEM, out.KeyPEM = resp.Certificate, keyPEM
	return &out, nil
}
