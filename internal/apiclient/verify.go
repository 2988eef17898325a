package apiclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/attest"
)

// ControllerHasTPM reports whether the controller answers mutual aTLS
// (runs with --tpm); it does not attest it.
func (c *Client) ControllerHasTPM(ctx context.Context) (bool, error) {
	var ci api.ControllerIdentity
	err := c.jsonCall(ctx, http.MethodGet, "/v1/attest/controller", nil, &ci)
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeNotFound {
		return false, nil
	}
	return err == nil, err
}

// ErrControllerUntrusted wraps every verdict of VerifyController against
// the controller (as opposed to not reaching it).
var ErrControllerUntrusted = errors.New("the controller failed attestation")

// VerifyController attests the controller (mutual aTLS) against pol with
// a new ControllerVerifier: the full check, credential activation
// included.
func (c *Client) VerifyController(ctx context.Context, pol *attest.Policy) error {
	return (&ControllerVerifier{Policy: pol}).Verify(ctx, c)
}

// ControllerVerifier attests the controller (mutual aTLS) against Policy:
// its TPM's EK must meet the policy, its AK must live on that TPM (it has
// to activate a credential made here for the EK and the AK), and its quote
// must cover the policy's PCRs with accepted values and be bound to the
// TLS connection it arrives on, a fresh nonce and api.ControllerBinding.
// After the first full check the AK is pinned: later checks send only a
// nonce, and the controller answers with one quote for many agents (its
// extraData the digest of their bindings; this agent's binding must be
// among them). A controller presenting another AK is checked in full
// again. Errors that are verdicts wrap ErrControllerUntrusted; others (the
// controller unreachable, a controller without a TPM) do not.
type ControllerVerifier struct {
	Policy *attest.Policy

	mu     sync.Mutex
	akArea []byte // the pinned AK's public area
}

// Verify checks the controller c talks to.
func (v *ControllerVerifier) Verify(ctx context.Context, c *Client) error {
	pol := v.Policy
	var ci api.ControllerIdentity
	if err := c.jsonCall(ctx, http.MethodGet, "/v1/attest/controller", nil, &ci); err != nil {
		return fmt.Errorf("controller attestation: %w", err)
	}
	untrusted := func(err error) error { return fmt.Errorf("%w: %w", ErrControllerUntrusted, err) }
	id, err := attest.DecodeIdentity(ci.Identity)
	if err != nil {
		return untrusted(err)
	}
	checked, err := pol.CheckIdentity(id)
	if err != nil {
		return untrusted(err)
	}
	v.mu.Lock()
	pinned := v.akArea != nil && bytes.Equal(v.akArea, checked.AKArea)
	v.mu.Unlock()
	ch, secret, err := pol.NewChallenge(checked, "", !pinned)
	if err != nil {
		return err
	}
	body, err := json.Marshal(api.ControllerAttestRequest{Challenge: attest.Encode(ch)})
	if err != nil {
		return err
	}
	// The evidence is bound to the connection it comes back on.
	cctx, connExp := connExporter(ctx)
	var ce api.ControllerEvidence
	if err := c.do(cctx, http.MethodPost, "/v1/attest/controller", bytes.NewReader(body), "application/json", &ce); err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == api.CodeAttestationFailed {
			return untrusted(err)
		}
		return fmt.Errorf("controller attestation: %w", err)
	}
	exporter, err := connExp()
	if err != nil {
		return err
	}
	ev, err := attest.DecodeEvidence(ce.Evidence)
	if err != nil {
		return untrusted(err)
	}
	binding := attest.Binding(exporter, ch.Nonce, api.ControllerBinding)
	if pinned {
		if !attest.InBatch(ce.Batch, binding) {
			return untrusted(errors.New("the batched quote does not cover this connection and nonce"))
		}
		if err := pol.VerifyQuote(checked.AKPub, ev.Quote, attest.BatchDigest(ce.Batch)); err != nil {
			return untrusted(err)
		}
		return nil
	}
	sum := sha256.Sum256(secret)
	if err := attest.CheckSecret(sum[:], ev.Secret); err != nil {
		return untrusted(err)
	}
	if err := pol.VerifyQuote(checked.AKPub, ev.Quote, binding); err != nil {
		return untrusted(err)
	}
	v.mu.Lock()
	v.akArea = checked.AKArea
	v.mu.Unlock()
	return nil
}
