package agent

import (
	"context"
	"errors"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/jointoken"
)

// Mutual aTLS: with Config.ControllerPolicy the agent attests the
// controller's own TPM (docs/attestation.md) before it enrolls, before
// every map stream and every ControllerEvery, and takes no map from a
// controller that fails; its data plane keeps the last map it applied.

// verifyBeforeEnroll attests the controller the join token pins, before
// the agent sends it anything.
func (a *Agent) verifyBeforeEnroll(ctx context.Context) error {
	if a.cfg.ControllerPolicy == nil {
		return nil
	}
	tok, err := jointoken.Parse(a.cfg.Token)
	if err != nil {
		return nil // enrollment reports the bad token
	}
	c, err := apiclient.NewPinned(a.cfg.Controller, tok.CAPin)
	if err != nil {
		return err
	}
	return a.checkController(ctx, c)
}

// verifyController attests the controller over the agent's own client.
func (a *Agent) verifyController(ctx context.Context) error {
	if a.cfg.ControllerPolicy == nil {
		return nil
	}
	return a.checkController(ctx, a.client())
}

// checkController runs the check and turns a verdict against the
// controller into attestation_failed (not retried as unreachable is).
func (a *Agent) checkController(ctx context.Context, c *apiclient.Client) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	a.mu.Lock()
	if a.ctlVerifier == nil {
		a.ctlVerifier = &apiclient.ControllerVerifier{Policy: a.cfg.ControllerPolicy}
	}
	v := a.ctlVerifier
	a.mu.Unlock()
	err := v.Verify(cctx, c)
	switch {
	case err == nil:
		a.metrics.controllerAttest.WithLabelValues("ok").Inc()
		a.mu.Lock()
		untrusted := a.controllerUntrusted
		a.controllerUntrusted = false
		a.mu.Unlock()
		if untrusted {
			a.log.Info("the controller passed attestation again")
		}
		return nil
	case errors.Is(err, apiclient.ErrControllerUntrusted):
		a.metrics.controllerAttest.WithLabelValues("untrusted").Inc()
		a.mu.Lock()
		a.controllerUntrusted = true
		a.mu.Unlock()
		a.log.Error("the controller failed attestation: no map is taken from it; the data plane keeps its last map", "err", err)
		return &api.Error{Code: api.CodeAttestationFailed, Message: err.Error()}
	default:
		a.metrics.controllerAttest.WithLabelValues("unreachable").Inc()
		return err
	}
}

// controllerLoop re-attests the controller on an interval and ends the
// map stream when it fails.
func (a *Agent) controllerLoop(ctx context.Context) {
	if a.cfg.ControllerPolicy == nil {
		return
	}
	every := a.cfg.ControllerEvery
	if every <= 0 {
		every = 30 * time.Second
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		var ae *api.Error
		if err := a.verifyController(ctx); errors.As(err, &ae) && ae.Code == api.CodeAttestationFailed {
			a.mu.Lock()
			stop := a.stopWatch
			a.mu.Unlock()
			if stop != nil {
				stop()
			}
		}
	}
}
