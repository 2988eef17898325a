package server

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/simulator"

	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/spec"
)

// controllerSpec is a spec whose attestation.controller trusts ek and
// accepts pcr16 as PCR 16.
func controllerPolicy(t *testing.T, ek, pcr16 string) *attest.Policy {
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

// relayTPM answers with evidence bound to another connection's exporter,
// as a relay in the middle would.
type relayTPM struct{ *simAttester }

func (r relayTPM) Respond(challenge, exporter, bind []byte) ([]byte, error) {
	return r.simAttester.Respond(challenge, make([]byte, len(exporter)), bind)
}

// TestAgentsAttestTheController: mutual aTLS. An agent holding the spec's
// attestation.controller accepts a controller whose TPM meets it, and
// refuses one whose EK it does not trust, whose PCR 16 changed, or whose
// evidence is bound to another connection; a controller without a TPM
// cannot be attested at all.
func TestAgentsAttestTheController(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	a, err := attest.NewAttester(sim)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	id, _ := a.Identity()
	pcr16, _ := attest.ReadPCR(a.TPM(), 16)
	ek, good := attest.EKDigest(id.EKPub), hex.EncodeToString(pcr16)
	ctx := context.Background()

	h := start(t, controller.Config{TPM: &simAttester{a: a}})
	if err := h.admin.VerifyController(ctx, controllerPolicy(t, ek, good)); err != nil {
		t.Fatalf("a controller that meets the policy: %v", err)
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

	// A tampered boot of the controller: PCR 16 moves.
	if err := attest.ExtendPCR(a.TPM(), 16, []byte("a tampered controller")); err != nil {
		t.Fatal(err)
	}
	untrusted("after a tampered boot", h.admin.VerifyController(ctx, controllerPolicy(t, ek, good)), "PCR 16")

	plain := start(t, controller.Config{})
	err = plain.admin.VerifyController(ctx, controllerPolicy(t, ek, good))
	if err == nil || errors.Is(err, apiclient.ErrControllerUntrusted) || code(err) != "not_found" {
		t.Errorf("a controller without a TPM: %v", err)
	}
}
