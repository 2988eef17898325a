package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"
)

// ca is a test EK certificate authority.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t testing.TB, name string) *ca {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &ca{cert: cert, key: key}
}

func (c *ca) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// issue makes an EK certificate for a PKIX public key.
func (c *ca) issue(t testing.TB, pkixPub []byte) []byte {
	pub, err := x509.ParsePKIXPublicKey(pkixPub)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "ek"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageKeyEncipherment}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newSim(t *testing.T) *Attester {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAttester(sim)
	if err != nil {
		sim.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

var (
	exporter = []byte("exporter-of-this-tls-connection-")
	wgPub    = []byte("wireguard-public-key-32-bytes...")
)

// setup returns a node with a certified EK and a policy trusting it.
func setup(t *testing.T) (*Attester, Identity, Policy) {
	a := newSim(t)
	root := newCA(t, "ek root")
	id, err := a.Identity()
	if err != nil {
		t.Fatal(err)
	}
	id.EKCert = root.issue(t, id.EKPub)
	return a, id, Policy{Roots: root.pool(), PCRs: []int{0, 1, 2, 7, 16}}
}

// attest runs the whole exchange and returns the first error.
func attest(p Policy, a *Attester, id Identity, tweak func(*Challenge, *Evidence)) error {
	c, err := p.CheckIdentity(id)
	if err != nil {
		return err
	}
	ch, secret, err := p.NewChallenge(c, "s1", true)
	if err != nil {
		return err
	}
	ev, err := a.Respond(ch, exporter, wgPub, nil)
	if err != nil {
		return err
	}
	if tweak != nil {
		tweak(&ch, &ev)
	}
	want := sha256.Sum256(secret)
	if err := CheckSecret(want[:], ev.Secret); err != nil {
		return err
	}
	return p.VerifyQuote(c.AKPub, ev.Quote, Binding(exporter, ch.Nonce, wgPub))
}

func TestGenuineTPMIsAccepted(t *testing.T) {
	a, id, p := setup(t)
	if err := attest(p, a, id, nil); err != nil {
		t.Fatal(err)
	}
}

func TestRefusals(t *testing.T) {
	a, id, p := setup(t)
	other := newCA(t, "someone else")
	cases := []struct {
		name   string
		policy func(Policy) Policy
		id     func(Identity) Identity
		tweak  func(*Challenge, *Evidence)
		want   error
	}{
		{name: "EK certificate from an unknown root", id: func(i Identity) Identity { i.EKCert = other.issue(t, i.EKPub); return i }, want: ErrEKUntrusted},
		{name: "no certificate, not on the allow-list", id: func(i Identity) Identity { i.EKCert = nil; return i }, want: ErrEKUntrusted},
		{name: "certificate for another key", id: func(i Identity) Identity {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
			i.EKCert = newCA(t, "x").issue(t, der)
			return i
		}, want: ErrEKMismatch},
		{name: "expired EK root", policy: func(p Policy) Policy { p.Now = func() time.Time { return time.Now().Add(48 * time.Hour) }; return p },
			want: ErrEKUntrusted},
		{name: "unrestricted AK", id: func(i Identity) Identity {
			pub, _ := tpm2.DecodePublic(i.AKPub)
			pub.Attributes &^= tpm2.FlagRestricted
			i.AKPub, _ = pub.Encode()
			return i
		}, want: ErrAKAttributes},
		{name: "software AK with the genuine EK", id: func(i Identity) Identity {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			pub, _ := tpm2.DecodePublic(i.AKPub)
			pub.ECCParameters.Point = tpm2.ECPoint{XRaw: k.X.FillBytes(make([]byte, 32)), YRaw: k.Y.FillBytes(make([]byte, 32))}
			i.AKPub, _ = pub.Encode()
			return i
		}, want: ErrActivation},
		{name: "wrong activated secret", tweak: func(c *Challenge, e *Evidence) { e.Secret = make([]byte, 32) }, want: ErrActivation},
		{name: "stale nonce", tweak: func(c *Challenge, e *Evidence) { c.Nonce = []byte("an older nonce") }, want: ErrBinding},
		{name: "PCR value edited after quoting", tweak: func(c *Challenge, e *Evidence) { e.Quote.PCRs[0] = make([]byte, 32); e.Quote.PCRs[0][0] = 1 },
			want: ErrPCRDigest},
		{name: "PCR value dropped", tweak: func(c *Challenge, e *Evidence) { delete(e.Quote.PCRs, 7) }, want: ErrPCRDigest},
		{name: "forged signature", tweak: func(c *Challenge, e *Evidence) { e.Quote.Signature[len(e.Quote.Signature)-1] ^= 1 }, want: ErrSignature},
		{name: "reference mismatch", policy: func(p Policy) Policy {
			p.Reference = map[int][][]byte{16: {make([]byte, 31)}}
			return p
		}, want: ErrPCRValue},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pol, ident := p, id
			if tc.policy != nil {
				pol = tc.policy(pol)
			}
			if tc.id != nil {
				ident = tc.id(ident)
			}
			err := attest(pol, a, ident, tc.tweak)
			if tc.name == "software AK with the genuine EK" && err != nil && !errors.Is(err, ErrActivation) {
				// The TPM itself refuses to activate a credential for an
				// AK it does not hold; an attacker then has no secret.
				if strings.Contains(err.Error(), "activating the credential") {
					err = ErrActivation
				}
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPartialSelectionRefused(t *testing.T) {
	a, id, p := setup(t)
	c, err := p.CheckIdentity(id)
	if err != nil {
		t.Fatal(err)
	}
	ch, _, _ := p.NewChallenge(c, "s", false)
	// A node that quotes fewer PCRs than the policy names.
	q, err := a.Quote([]int{0, 1}, Binding(exporter, ch.Nonce, wgPub), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.VerifyQuote(c.AKPub, q, Binding(exporter, ch.Nonce, wgPub)); !errors.Is(err, ErrPCRSelection) {
		t.Fatalf("got %v", err)
	}
}

func TestRelayedToAnotherConnection(t *testing.T) {
	a, id, p := setup(t)
	c, _ := p.CheckIdentity(id)
	ch, _, _ := p.NewChallenge(c, "s", false)
	ev, err := a.Respond(ch, exporter, wgPub, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := []byte("exporter-of-the-relay-connection")
	if err := p.VerifyQuote(c.AKPub, ev.Quote, Binding(other, ch.Nonce, wgPub)); !errors.Is(err, ErrBinding) {
		t.Fatalf("relayed evidence: %v", err)
	}
	if err := p.VerifyQuote(c.AKPub, ev.Quote, Binding(exporter, ch.Nonce, []byte("another wireguard key..........."))); !errors.Is(err, ErrBinding) {
		t.Fatalf("evidence for another WireGuard key: %v", err)
	}
}

func TestAllowListWithoutCertificate(t *testing.T) {
	a, id, p := setup(t)
	id.EKCert = nil
	p.EKAllowList = map[string]bool{EKDigest(id.EKPub): true}
	if err := attest(p, a, id, nil); err != nil {
		t.Fatal(err)
	}
}

func TestTamperedPCRIsRefused(t *testing.T) {
	a, id, p := setup(t)
	zero, err := ReadPCR(a.TPM(), 16)
	if err != nil {
		t.Fatal(err)
	}
	p.Reference = map[int][][]byte{16: {zero}}
	if err := attest(p, a, id, nil); err != nil {
		t.Fatalf("before tampering: %v", err)
	}
	if err := ExtendPCR(a.TPM(), 16, []byte("a tampered boot")); err != nil {
		t.Fatal(err)
	}
	if err := attest(p, a, id, nil); !errors.Is(err, ErrPCRValue) {
		t.Fatalf("after extending PCR 16: %v", err)
	}
}

func TestSHA1OnlyRefused(t *testing.T) {
	a, id, p := setup(t)
	c, _ := p.CheckIdentity(id)
	ch, _, _ := p.NewChallenge(c, "s", false)
	bind := Binding(exporter, ch.Nonce, wgPub)
	raw, sig, err := tpm2.QuoteRaw(a.TPM(), a.ak.Handle(), "", "", bind, tpm2.PCRSelection{Hash: tpm2.AlgSHA1, PCRs: p.PCRs}, tpm2.AlgNull)
	if err != nil {
		t.Fatal(err)
	}
	q := Quote{Attest: raw, Signature: sig, PCRs: map[int][]byte{}}
	if err := p.VerifyQuote(c.AKPub, q, bind); !errors.Is(err, ErrSHA1Only) {
		t.Fatalf("SHA-1 quote: %v", err)
	}
}

func TestEventLog(t *testing.T) {
	a, id, p := setup(t)
	p.PCRs = append(p.PCRs, 23)
	ev := Measure(23, "statemesh-agent", []byte("agent binary"), "statemesh agent")
	if err := ExtendPCR(a.TPM(), 23, []byte("agent binary")); err != nil {
		t.Fatal(err)
	}
	c, _ := p.CheckIdentity(id)
	for name, tc := range map[string]struct {
		log  []Event
		want error
	}{
		"replays":       {log: []Event{ev}},
		"wrong digest":  {log: []Event{Measure(23, "statemesh-agent", []byte("another binary"), "")}, want: ErrEventLogReplay},
		"unknown type":  {log: []Event{{PCR: 23, Type: "mystery", Digest: ev.Digest}}, want: ErrUnknownEventType},
		"unquoted PCR":  {log: []Event{ev, Measure(22, "kernel", []byte("k"), "")}, want: ErrEventLogReplay},
		"short digest":  {log: []Event{{PCR: 23, Type: "kernel", Digest: []byte{1}}}, want: ErrMalformed},
		"missing event": {log: []Event{ev, ev}, want: ErrEventLogReplay},
	} {
		t.Run(name, func(t *testing.T) {
			ch, _, _ := p.NewChallenge(c, "s", false)
			e, err := a.Respond(ch, exporter, wgPub, tc.log)
			if err != nil {
				t.Fatal(err)
			}
			err = p.VerifyQuote(c.AKPub, e.Quote, Binding(exporter, ch.Nonce, wgPub))
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDecoders(t *testing.T) {
	a, id, p := setup(t)
	c, _ := p.CheckIdentity(id)
	ch, _, _ := p.NewChallenge(c, "s", true)
	ev, err := a.Respond(ch, exporter, wgPub, nil)
	if err != nil {
		t.Fatal(err)
	}
	good := Encode(ev)
	if _, err := DecodeEvidence(good); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		in   []byte
		want error
	}{
		"truncated":     {good[:len(good)/2], ErrMalformed},
		"oversized":     {append([]byte(`{"version":1,"x":"`), make([]byte, MaxEvidenceBytes)...), ErrTooLarge},
		"unknown field": {[]byte(`{"version":1,"session":"s","quote":{"attest":"AA==","signature":"AA=="},"extra":1}`), ErrMalformed},
		"wrong version": {[]byte(`{"version":9,"session":"s","quote":{"attest":"AA==","signature":"AA=="}}`), ErrMalformed},
		"no quote":      {[]byte(`{"version":1,"session":"s","quote":{}}`), ErrMalformed},
		"bad PCR":       {[]byte(`{"version":1,"session":"s","quote":{"attest":"AA==","signature":"AA==","pcrs":{"99":"AA=="}}}`), ErrMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeEvidence(tc.in); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := DecodeIdentity([]byte(`{"version":1}`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("identity without keys: %v", err)
	}
	// Garbage attestation data inside well-formed JSON.
	bad := ev
	bad.Quote.Attest = []byte{0xff, 0x54, 0x43, 0x47}
	if err := p.VerifyQuote(c.AKPub, bad.Quote, Binding(exporter, ch.Nonce, wgPub)); !errors.Is(err, ErrMalformed) {
		t.Errorf("garbage TPMS_ATTEST: %v", err)
	}
}

func FuzzDecodeEvidence(f *testing.F) {
	f.Add([]byte(`{"version":1,"session":"s","quote":{"attest":"AA==","signature":"AA==","pcrs":{"0":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}}`))
	f.Add([]byte(`{"version":1,"session":"s","secret":"AA==","quote":{"attest":"/1RDR4AYAAEA","signature":"AA==","eventLog":[{"pcr":1,"type":"kernel","digest":"AA=="}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := DecodeEvidence(b)
		if err != nil {
			return
		}
		// Whatever decodes must verify or fail cleanly, never panic.
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		_ = Policy{PCRs: []int{0}}.VerifyQuote(&k.PublicKey, ev.Quote, []byte("x"))
	})
}

func FuzzReplay(f *testing.F) {
	f.Add(23, "kernel", []byte("digest"))
	f.Fuzz(func(t *testing.T, pcr int, typ string, digest []byte) {
		_ = Replay([]Event{{PCR: pcr, Type: typ, Digest: digest}}, map[int][]byte{pcr: make([]byte, 32)})
	})
}

func FuzzDecodeIdentity(f *testing.F) {
	f.Add([]byte(`{"version":1,"ekPub":"AA==","akPub":"AA=="}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := DecodeIdentity(b)
		if err != nil {
			return
		}
		_, _ = Policy{}.CheckIdentity(id)
	})
}
