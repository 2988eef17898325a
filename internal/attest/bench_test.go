package attest

import (
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm-tools/simulator"
)

// BenchmarkVerify is the controller's cost of one attested enrollment with
// the evidence pre-generated: identity checks (EK certificate chain, AK
// attributes), the challenge (credential encrypted to the EK), the
// activated-secret check and the quote verification.
func BenchmarkVerify(b *testing.B) {
	sim, err := simulator.Get()
	if err != nil {
		b.Fatal(err)
	}
	a, err := NewAttester(sim)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	root := newCA(b, "ek root")
	id, _ := a.Identity()
	id.EKCert = root.issue(b, id.EKPub)
	p := Policy{Roots: root.pool(), PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7}}
	c, err := p.CheckIdentity(id)
	if err != nil {
		b.Fatal(err)
	}
	ch, secret, _ := p.NewChallenge(c, "s", true)
	ev, err := a.Respond(ch, exporter, wgPub, nil)
	if err != nil {
		b.Fatal(err)
	}
	raw := Encode(ev)
	rawID := Encode(id)
	want := sha256.Sum256(secret)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		id, err := DecodeIdentity(rawID)
		if err != nil {
			b.Fatal(err)
		}
		c, err := p.CheckIdentity(id)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := p.NewChallenge(c, "s", true); err != nil {
			b.Fatal(err)
		}
		e, err := DecodeEvidence(raw)
		if err != nil {
			b.Fatal(err)
		}
		if err := CheckSecret(want[:], e.Secret); err != nil {
			b.Fatal(err)
		}
		if err := p.VerifyQuote(c.AKPub, e.Quote, Binding(exporter, ch.Nonce, wgPub)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}
