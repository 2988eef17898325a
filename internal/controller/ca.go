package controller

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/jointoken"
	"github.com/statemesh/statemesh/internal/secrets"
)

// NodeURIPrefix is the URI SAN prefix of node certificates.
const NodeURIPrefix = "statemesh://node/"

// CA is the controller's certificate authority: it signs the controller's
// serving certificates and the nodes' client certificates.
type CA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newCA(mesh string, now time.Time) (*CA, CARecord, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, CARecord{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: "StateMesh CA " + mesh, Organization: []string{"StateMesh"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, CARecord{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, CARecord{}, err
	}
	rec := CARecord{
		CertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		KeyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
	}
	ca, err := loadCA(rec)
	return ca, rec, err
}

func loadCA(rec CARecord) (*CA, error) {
	cb, _ := pem.Decode([]byte(rec.CertPEM))
	kb, _ := pem.Decode([]byte(rec.KeyPEM))
	if cb == nil || kb == nil {
		return nil, errors.New("CA record holds no PEM certificate or key")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("CA key cannot sign")
	}
	return &CA{cert: cert, key: signer}, nil
}

func randSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// CertPEM returns the CA certificate.
func (c *CA) CertPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw}))
}

// Pool returns a pool holding the CA.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// Pin is the pin of the CA that join tokens carry: base64url(SHA-256 of the
// CA certificate's SubjectPublicKeyInfo).
func (c *CA) Pin() string { return jointoken.CAPin(c.cert) }

// ServerCertificate issues a serving certificate for the given hosts.
func (c *CA) ServerCertificate(hosts []string, now time.Time, ttl time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: "statemesh-controller"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, c.cert.Raw}, PrivateKey: key}, nil
}

// SignNode signs a node's certificate request with the node's name as its
// identity. The request's own subject is ignored.
func (c *CA) SignNode(csrPEM string, name string, now time.Time, ttl time.Duration) (certPEM string, serial CertSerial, err error) {
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return "", CertSerial{}, errors.New("csr is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return "", CertSerial{}, fmt.Errorf("parsing csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return "", CertSerial{}, fmt.Errorf("csr signature: %w", err)
	}
	u, err := url.Parse(NodeURIPrefix + name)
	if err != nil {
		return "", CertSerial{}, err
	}
	sn := randSerial()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"StateMesh node"}},
		URIs:         []*url.URL{u},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, csr.PublicKey, c.key)
	if err != nil {
		return "", CertSerial{}, err
	}
	if serial, err = SerialOf(sn); err != nil {
		return "", CertSerial{}, err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), serial, nil
}

// CSRKeyFingerprint checks a PEM certificate request's signature and
// returns the SHA-256 (hex) of its public key: the signature proves the
// sender holds that key.
func CSRKeyFingerprint(csrPEM string) (KeyDigest, error) {
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return KeyDigest{}, errors.New("csr is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return KeyDigest{}, fmt.Errorf("parsing csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return KeyDigest{}, fmt.Errorf("csr signature: %w", err)
	}
	return sha256.Sum256(csr.RawSubjectPublicKeyInfo), nil
}

// NodeIdentity returns the node name and serial of a verified client
// certificate.
func NodeIdentity(cert *x509.Certificate) (name, serial string, err error) {
	for _, u := range cert.URIs {
		if s := u.String(); strings.HasPrefix(s, NodeURIPrefix) {
			return strings.TrimPrefix(s, NodeURIPrefix), cert.SerialNumber.Text(16), nil
		}
	}
	return "", "", errors.New("certificate carries no StateMesh node identity")
}

// nextPEM returns the DER of the next PEM CERTIFICATE block and the rest.
func nextPEM(b []byte) (der, rest []byte) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, nil
		}
		if blk.Type == "CERTIFICATE" {
			return blk.Bytes, b
		}
	}
}

// sealCA seals the CA key with the keyring (when there is one).
func (c *Controller) sealCA(rec CARecord) (CARecord, error) {
	if c.cfg.Keyring == nil || rec.KeyPEM == "" {
		return rec, nil
	}
	sealed, err := c.cfg.Keyring.Seal(keyCA, []byte(rec.KeyPEM))
	if err != nil {
		return rec, fmt.Errorf("sealing the CA key: %w", err)
	}
	return CARecord{CertPEM: rec.CertPEM, KeySealed: sealed}, nil
}

// openCA returns the record with its key in clear.
func (c *Controller) openCA(rec CARecord) (CARecord, error) {
	if len(rec.KeySealed) == 0 {
		return rec, nil
	}
	if c.cfg.Keyring == nil {
		return rec, errors.New("the CA key in the store is sealed, but this controller has no key-encryption keyring (--kek-file or STATEMESH_KEK)")
	}
	key, err := c.cfg.Keyring.Open(keyCA, rec.KeySealed)
	if err != nil {
		id, _ := secrets.KeyID(rec.KeySealed)
		return rec, fmt.Errorf("opening the CA key (sealed with key %q): %w; every replica needs the same keyring", id, err)
	}
	return CARecord{CertPEM: rec.CertPEM, KeyPEM: string(key)}, nil
}
