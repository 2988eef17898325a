package server

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/spec"
)

// controllerSpec is a spec whose attestation.controller trusts ek and
// accepts pcr16 as PCR 16.
func controllerPolicy(t *testing.T, ek, pcr16 string) *attest.Policy {
	return controllerPolicyTB(t, ek, pcr16)
}

func controllerPolicyTB(t testing.TB, ek, pcr16 string) *attest.Policy {
	t.Helper()
	m, err := spec.Parse(fmt.Appendf(nil, `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: zt}
attestation:
  ekAllowList: [%s]
  controller:
    ekAllowList: [%s]
    pcrs: [16]
    reference: {16: [%s]}
regions:
  - name: r
    clusters: [{name: c}]
`, ek, ek, pcr16))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := controller.ControllerPolicy(m)
	if err != nil || pol == nil {
		t.Fatal(pol, err)
	}
	return pol
}

// Quote makes the simulator a controller.TPM.
func (s *simAttester) Quote(pcrs []int, extraData []byte) ([]byte, error) {
	q, err := s.a.Quote(pcrs, extraData, nil)
	return attest.Encode(q), err
}

// relayTPM answers with evidence bound to another connection's exporter,
// or another batch, as a relay in the middle would.
type relayTPM struct{ *simAttester }

func (r relayTPM) Respond(challenge, exporter, bind []byte) ([]byte, error) {
	return r.simAttester.Respond(challenge, make([]byte, len(exporter)), bind)
}

func (r relayTPM) Quote(pcrs []int, extraData []byte) ([]byte, error) {
	return r.simAttester.Quote(pcrs, make([]byte, len(extraData)))
}

// countingTPM counts quotes.
type countingTPM struct {
	*simAttester
	quotes atomic.Int64
}

func (c *countingTPM) Quote(pcrs []int, extraData []byte) ([]byte, error) {
	c.quotes.Add(1)
	return c.simAttester.Quote(pcrs, extraData)
}

// TestAgentsAttestTheController: mutual aTLS. An agent holding the spec's
// attestation.controller accepts a controller whose TPM meets it, and
// refuses one whose EK it does not trust, whose PCR 16 changed, or whose
// evidence is bound to another connection; a controller without a TPM
// cannot be attested at all.
func TestAgentsAttestTheController(t *testing.T) {
	a, id, pcr16 := simTPM(t)
	ek, good := attest.EKDigest(id.EKPub), hex.EncodeToString(pcr16)
	ctx := context.Background()

	tpmc := &countingTPM{simAttester: &simAttester{a: a}}
	h := start(t, controller.Config{TPM: tpmc})
	if err := h.admin.VerifyController(ctx, controllerPolicy(t, ek, good)); err != nil {
		t.Fatalf("a controller that meets the policy: %v", err)
	}
	// Agents pin the AK after their first check; later checks are nonces
	// answered by batched quotes: 16 agents checking at once cost the
	// controller's TPM a quote or two, not 16.
	vs := make([]*apiclient.ControllerVerifier, 16)
	for i := range vs {
		vs[i] = &apiclient.ControllerVerifier{Policy: controllerPolicy(t, ek, good)}
		if err := vs[i].Verify(ctx, h.admin); err != nil {
			t.Fatalf("first check %d: %v", i, err)
		}
	}
	before := tpmc.quotes.Load()
	var wg sync.WaitGroup
	errs := make(chan error, len(vs))
	for _, v := range vs {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- v.Verify(ctx, h.admin) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a pinned check: %v", err)
		}
	}
	if q := tpmc.quotes.Load() - before; q > 2 {
		t.Errorf("16 pinned checks at once took %d quotes, want them batched (≤ 2)", q)
	}
	untrusted := func(what string, err error, want string) {
		t.Helper()
		if !errors.Is(err, apiclient.ErrControllerUntrusted) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want a verdict about %q", what, err, want)
		}
	}
	other := strings.Repeat("ab", 32)
	untrusted("EK not trusted", h.admin.VerifyController(ctx, controllerPolicy(t, other, good)), "EK")
	untrusted("PCR 16 off reference", h.admin.VerifyController(ctx, controllerPolicy(t, ek, other)), "PCR 16")

	relay := start(t, controller.Config{TPM: relayTPM{&simAttester{a: a}}})
	untrusted("evidence for another connection", relay.admin.VerifyController(ctx, controllerPolicy(t, ek, good)), "not bound to this TLS connection")
	// A pinned agent facing a batched quote over another batch.
	relayed := &apiclient.ControllerVerifier{Policy: controllerPolicy(t, ek, good)}
	if err := relayed.Verify(ctx, h.admin); err != nil {
		t.Fatal(err)
	}
	untrusted("a batched quote over other bindings", relayed.Verify(ctx, relay.admin), "not bound")

	// A tampered boot of the controller: PCR 16 moves.
	if err := attest.ExtendPCR(a.TPM(), 16, []byte("a tampered controller")); err != nil {
		t.Fatal(err)
	}
	untrusted("after a tampered boot", h.admin.VerifyController(ctx, controllerPolicy(t, ek, good)), "PCR 16")
	untrusted("after a tampered boot, pinned", vs[0].Verify(ctx, h.admin), "PCR 16")

	plain := start(t, controller.Config{})
	err := plain.admin.VerifyController(ctx, controllerPolicy(t, ek, good))
	if err == nil || errors.Is(err, apiclient.ErrControllerUntrusted) || code(err) != "not_found" {
		t.Errorf("a controller without a TPM: %v", err)
	}
}

// BenchmarkControllerAttestation: what agents attesting the controller
// cost its TPM. "full" is an agent's first check (credential activation
// and a quote of its own); "pinned" is 100 agents re-checking at once
// (nonces answered by batched quotes). TPM uses per check is the figure
// that carries over to a hardware TPM (tens of operations a second); the
// simulator's time does not.
func BenchmarkControllerAttestation(b *testing.B) {
	a, id, pcr16 := simTPM(b)
	tpmc := &countingTPM{simAttester: &simAttester{a: a}}
	h := start(b, controller.Config{TPM: tpmc})
	pol := controllerPolicyTB(b, attest.EKDigest(id.EKPub), hex.EncodeToString(pcr16))
	ctx := context.Background()
	b.Run("full", func(b *testing.B) {
		for b.Loop() {
			if err := h.admin.VerifyController(ctx, pol); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pinned-100-at-once", func(b *testing.B) {
		vs := make([]*apiclient.ControllerVerifier, 100)
		for i := range vs {
			vs[i] = &apiclient.ControllerVerifier{Policy: pol}
			if err := vs[i].Verify(ctx, h.admin); err != nil {
				b.Fatal(err)
			}
		}
		before := tpmc.quotes.Load()
		rounds := 0
		for b.Loop() {
			rounds++
			var wg sync.WaitGroup
			for _, v := range vs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := v.Verify(ctx, h.admin); err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
		}
		b.ReportMetric(float64(tpmc.quotes.Load()-before)/float64(rounds*len(vs)), "quotes/check")
	})
}
