package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/jointoken"
	"github.com/statemesh/statemesh/internal/netmap"
)

// simAttester adapts an attester on the in-process TPM simulator.
type simAttester struct {
	a *attest.Attester
	// tamper, when set, edits the evidence after the TPM made it.
	tamper func(*attest.Evidence)
	// exporter, when set, replaces the connection's exporter (relay).
	exporter []byte
}

func (s *simAttester) Identity() ([]byte, error) {
	id, err := s.a.Identity()
	return attest.Encode(id), err
}

func (s *simAttester) Respond(challenge, exporter, wgPub []byte) ([]byte, error) {
	var ch attest.Challenge
	if err := json.Unmarshal(challenge, &ch); err != nil {
		return nil, err
	}
	if s.exporter != nil {
		exporter = s.exporter
	}
	ev, err := s.a.Respond(ch, exporter, wgPub, nil)
	if err != nil {
		return nil, err
	}
	if s.tamper != nil {
		s.tamper(&ev)
	}
	return attest.Encode(ev), nil
}

func attestSpec(ekDigest, pcr16 string) string {
	return fmt.Sprintf(`apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: zt}
attestation:
  ekAllowList: [%s]
  pcrs: [0, 7, 16]
  reference: {16: [%s]}
  reattestInterval: 5s
regions:
  - name: r
    clusters:
      - {name: strict, maxNodes: 20}
      - {name: lenient, maxNodes: 20, admitWithoutTPM: true}
`, ekDigest, pcr16)
}

// simTPM opens go-tpm-tools' TPM simulator (one per process at a time)
// until the test ends, with its identity and PCR 16.
func simTPM(t testing.TB) (*attest.Attester, attest.Identity, []byte) {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	a, err := attest.NewAttester(sim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	id, err := a.Identity()
	if err != nil {
		t.Fatal(err)
	}
	pcr16, err := attest.ReadPCR(a.TPM(), 16)
	if err != nil {
		t.Fatal(err)
	}
	return a, id, pcr16
}

func TestAttestedEnrollment(t *testing.T) {
	a, id, pcr16 := simTPM(t)
	h := start(t, controller.Config{})
	ctx := context.Background()
	if _, err := h.admin.ApplySpec(ctx, []byte(attestSpec(attest.EKDigest(id.EKPub), hex.EncodeToString(pcr16)))); err != nil {
		t.Fatal(err)
	}
	enroll := func(tok, name, role string, att apiclient.Attester) (*apiclient.Identity, error) {
		k, _ := netmap.GeneratePrivateKey()
		return apiclient.EnrollAttested(ctx, h.url, tok, api.EnrollRequest{Name: name, Role: role, PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"}, att)
	}
	good := &simAttester{a: a}

	// Without evidence: refused where the cluster requires a TPM, weak where
	// it admits nodes without one, refused as a gateway anywhere.
	if _, err := enroll(h.token(api.CreateTokenRequest{Cluster: "r/strict"}), "no-tpm", "node", nil); code(err) != api.CodeAttestationFailed {
		t.Errorf("TPM-less node in a strict cluster: %v", err)
	}
	weak, err := enroll(h.token(api.CreateTokenRequest{Cluster: "r/lenient"}), "weak-1", "node", nil)
	if err != nil || weak.Node.Class != netmap.ClassWeak {
		t.Fatalf("TPM-less node in a lenient cluster: %+v %v", weak, err)
	}
	if _, err := enroll(h.token(api.CreateTokenRequest{Region: "r", Role: "gateway"}), "gw-weak", "gateway", nil); code(err) != api.CodeAttestationFailed {
		t.Errorf("TPM-less gateway: %v", err)
	}

	// Evidence that fails is refused, never weak, even where weak is allowed.
	for name, att := range map[string]*simAttester{
		"relayed to another connection": {a: a, exporter: []byte("the exporter of some other conn")},
		"forged signature":              {a: a, tamper: func(e *attest.Evidence) { e.Quote.Signature[len(e.Quote.Signature)-1] ^= 1 }},
		"wrong secret":                  {a: a, tamper: func(e *attest.Evidence) { e.Secret = make([]byte, 32) }},
		"partial PCRs": {a: a, tamper: func(e *attest.Evidence) {
			q, _ := a.Quote([]int{0}, nil, nil)
			e.Quote = q
		}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := enroll(h.token(api.CreateTokenRequest{Cluster: "r/lenient"}), "bad", "node", att)
			if code(err) != api.CodeAttestationFailed {
				t.Fatalf("got %v", err)
			}
			if _, err := h.admin.Node(ctx, "bad"); code(err) != api.CodeNotFound {
				t.Fatal("a refused node was registered")
			}
		})
	}

	// Genuine evidence: strong.
	strong, err := enroll(h.token(api.CreateTokenRequest{Cluster: "r/strict"}), "strong-1", "node", good)
	if err != nil || strong.Node.Class != netmap.ClassStrong {
		t.Fatalf("attested node: %+v %v", strong, err)
	}
	// One TPM, one node.
	if _, err := enroll(h.token(api.CreateTokenRequest{Cluster: "r/strict"}), "clone", "node", good); code(err) != api.CodeAlreadyExists {
		t.Errorf("second node with the same TPM: %v", err)
	}

	// Replaying an answered session is refused.
	t.Run("replayed session", func(t *testing.T) {
		pin := jointoken.CAPin(mustCert(t, h.cfg.CA))
		c, _ := apiclient.NewPinned(h.url, pin)
		tok := h.token(api.CreateTokenRequest{Cluster: "r/lenient", Uses: 2})
		idJSON, _ := good.Identity()
		ch, err := c.AttestChallenge(ctx, tok, idJSON)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := netmap.GeneratePrivateKey()
		pub := k.PublicKey()
		send := func(name string) error {
			var resp api.EnrollResponse
			return c.PostBound(ctx, "/v1/enroll", func(exp []byte) (any, error) {
				ev, err := good.Respond(ch.Challenge, exp, pub[:])
				if err != nil {
					return nil, err
				}
				return api.EnrollRequest{Token: tok, Name: name, Role: "node", PublicKey: pub, CSR: testCSR(t), Evidence: ev}, nil
			}, &resp)
		}
		// The first answer uses the session (this TPM is already enrolled,
		// so it is refused for that reason); the second finds it gone.
		if err := send("replay-a"); code(err) != api.CodeAlreadyExists {
			t.Fatalf("first answer: %v", err)
		}
		if err := send("replay-b"); code(err) != api.CodeAttestationFailed || !strings.Contains(err.Error(), "session") {
			t.Fatalf("replayed session: %v", err)
		}
	})

	// Two concurrent enrollments with one single-use token: one wins.
	t.Run("single-use token raced", func(t *testing.T) {
		tok := h.token(api.CreateTokenRequest{Cluster: "r/lenient"})
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = enroll(tok, fmt.Sprintf("race-%d", i), "node", nil)
			}()
		}
		wg.Wait()
		ok, usedUp := 0, 0
		for _, err := range errs {
			switch code(err) {
			case "ok":
				ok++
			case api.CodeTokenUsedUp:
				usedUp++
			}
		}
		if ok != 1 || usedUp != 1 {
			t.Fatalf("results %v", errs)
		}
	})

	// Re-attestation: succeeds while PCRs hold; after a tampered boot the
	// node is quarantined and its peers drop it.
	nc, _ := strong.Client()
	reattest := func() error {
		ch, err := nc.NodeChallenge(ctx)
		if err != nil {
			return err
		}
		pub, _ := netmap.ParseKey(strong.Node.PublicKey.String())
		return nc.Reattest(ctx, func(exp []byte) ([]byte, error) { return good.Respond(ch.Challenge, exp, pub[:]) })
	}
	if err := reattest(); err != nil {
		t.Fatalf("re-attestation: %v", err)
	}
	n, _ := h.admin.Node(ctx, "strong-1")
	if n.AttestedAt == nil {
		t.Error("attestedAt not recorded")
	}
	if _, err := weak.Client(); err != nil {
		t.Fatal(err)
	}
	wc, _ := weak.Client()
	if _, err := wc.NodeChallenge(ctx); code(err) != api.CodePermissionDenied {
		t.Errorf("weak node asking to re-attest: %v", err)
	}
	if err := attest.ExtendPCR(a.TPM(), 16, []byte("a tampered boot")); err != nil {
		t.Fatal(err)
	}
	if err := reattest(); code(err) != api.CodeAttestationFailed {
		t.Fatalf("re-attestation after a tampered boot: %v", err)
	}
	n, _ = h.admin.Node(ctx, "strong-1")
	if n.State != "quarantined" || !strings.Contains(n.Reason, "PCR 16") {
		t.Fatalf("after a failed re-attestation: state %s reason %q", n.State, n.Reason)
	}
}

func mustCert(t *testing.T, pemText string) *x509.Certificate {
	blk, _ := pem.Decode([]byte(pemText))
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testCSR(t *testing.T) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// BenchmarkAttestedEnrollment is an attested enrollment end to end over
// HTTPS on loopback: challenge, credential activation and quote on the TPM
// (the in-process simulator), verification and registration. Each node is
// removed afterwards so the same TPM can enroll again.
func BenchmarkAttestedEnrollment(b *testing.B) {
	a, id, pcr16 := simTPM(b)
	h := start(b, controller.Config{SlotGrace: time.Nanosecond})
	ctx := context.Background()
	if _, err := h.admin.ApplySpec(ctx, []byte(attestSpec(attest.EKDigest(id.EKPub), hex.EncodeToString(pcr16)))); err != nil {
		b.Fatal(err)
	}
	tok := h.token(api.CreateTokenRequest{Cluster: "r/strict", Uses: 1_000_000})
	att := &simAttester{a: a}
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		k, _ := netmap.GeneratePrivateKey()
		start := time.Now()
		_, err := apiclient.EnrollAttested(ctx, h.url, tok, api.EnrollRequest{Name: fmt.Sprintf("n%d", i), Role: "node", PublicKey: k.PublicKey()}, att)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if err := h.admin.RemoveNode(ctx, fmt.Sprintf("n%d", i)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
