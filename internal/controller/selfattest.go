package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/attest"
)

// TPM is the controller's own TPM (attest.Device): its identity, evidence
// for a challenge with a credential (bound to a TLS exporter and a binding
// value), and quotes.
type TPM interface {
	Identity() ([]byte, error)
	Respond(challenge, exporter, bind []byte) ([]byte, error)
	Quote(pcrs []int, extraData []byte) ([]byte, error)
}

// selfAttest answers agents' challenges with the controller's TPM. A TPM
// does tens of quotes a second at best, and thousands of agents attest the
// controller on an interval, so:
//   - the identity is read once;
//   - an agent's first challenge carries a credential (its AK must be
//     proven to live on the TPM with the EK): activation and a quote of its
//     own, one TPM use each (serialized);
//   - later challenges (the agent pinned the AK) are only nonces: their
//     bindings are gathered for up to BatchWindow and one quote covers
//     them all, its extraData the SHA-256 of the bindings in order; each
//     agent gets the quote and the list, finds its own binding in it and
//     checks the hash.
type selfAttest struct {
	tpm    TPM
	window time.Duration

	use sync.Mutex // one TPM use at a time

	idMu sync.Mutex
	id   []byte

	mu      sync.Mutex
	pending map[string][]*quoteWaiter // PCR list → waiters
	timer   bool
}

type quoteWaiter struct {
	binding []byte
	pcrs    []int
	done    chan quoteResult
}

type quoteResult struct {
	quote json.RawMessage
	batch [][]byte
	err   error
}

// BatchWindow is how long quote-only challenges are gathered into one
// quote.
const BatchWindow = 100 * time.Millisecond

func (s *selfAttest) identity() ([]byte, error) {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if s.id != nil {
		return s.id, nil
	}
	s.use.Lock()
	id, err := s.tpm.Identity()
	s.use.Unlock()
	if err != nil {
		return nil, err
	}
	s.id = id
	return id, nil
}

// batchQuote queues a binding and waits for the quote that covers it.
func (s *selfAttest) batchQuote(ctx context.Context, pcrs []int, binding []byte) (quoteResult, error) {
	w := &quoteWaiter{binding: binding, pcrs: pcrs, done: make(chan quoteResult, 1)}
	key := fmt.Sprint(pcrs)
	s.mu.Lock()
	if s.pending == nil {
		s.pending = map[string][]*quoteWaiter{}
	}
	s.pending[key] = append(s.pending[key], w)
	if !s.timer {
		s.timer = true
		time.AfterFunc(s.window, s.flush)
	}
	s.mu.Unlock()
	select {
	case r := <-w.done:
		return r, r.err
	case <-ctx.Done():
		return quoteResult{}, ctx.Err()
	}
}

// flush quotes every gathered batch, one quote per PCR selection.
func (s *selfAttest) flush() {
	s.mu.Lock()
	pending := s.pending
	s.pending, s.timer = nil, false
	s.mu.Unlock()
	for _, ws := range pending {
		var batch [][]byte
		for _, w := range ws {
			batch = append(batch, w.binding)
		}
		extra := attest.BatchDigest(batch)
		s.use.Lock()
		q, err := s.tpm.Quote(ws[0].pcrs, extra)
		s.use.Unlock()
		for _, w := range ws {
			w.done <- quoteResult{quote: q, batch: batch, err: err}
		}
	}
}

// SelfIdentity returns the controller's TPM identity for mutual aTLS.
func (c *Controller) SelfIdentity() (json.RawMessage, error) {
	if c.self == nil {
		return nil, apiErr(api.CodeNotFound, "this controller runs without a TPM: agents cannot attest it (start it with --tpm)")
	}
	id, err := c.self.identity()
	if err != nil {
		c.log.Error("reading the controller's TPM identity", "err", err)
		return nil, apiErr(api.CodeUnavailable, "the controller's TPM does not answer")
	}
	return id, nil
}

// SelfEvidence answers an agent's challenge with the controller's TPM,
// bound to exporter (the agent's connection), the nonce and
// api.ControllerBinding: with a credential, activation and a quote of its
// own; without (the agent pinned the AK), a share of a batched quote.
func (c *Controller) SelfEvidence(ctx context.Context, challenge json.RawMessage, exporter []byte) (api.ControllerEvidence, error) {
	var out api.ControllerEvidence
	if c.self == nil {
		return out, apiErr(api.CodeNotFound, "this controller runs without a TPM: agents cannot attest it (start it with --tpm)")
	}
	var ch attest.Challenge
	if err := json.Unmarshal(challenge, &ch); err != nil {
		return out, apiErr(api.CodeInvalidArgument, "challenge: %v", err)
	}
	if len(ch.Nonce) < 16 || len(ch.Nonce) > 64 || len(ch.PCRs) == 0 || len(ch.PCRs) > 24 {
		return out, apiErr(api.CodeInvalidArgument, "challenge: want a 16-64 byte nonce and 1-24 PCRs")
	}
	for _, p := range ch.PCRs {
		if p < 0 || p > 23 {
			return out, apiErr(api.CodeInvalidArgument, "challenge: PCR %d does not exist", p)
		}
	}
	if len(ch.CredBlob) > 0 {
		c.self.use.Lock()
		ev, err := c.self.tpm.Respond(challenge, exporter, api.ControllerBinding)
		c.self.use.Unlock()
		if err != nil {
			// A credential made for another TPM fails activation.
			return out, apiErr(api.CodeAttestationFailed, "the controller's TPM could not answer the challenge: %v", err)
		}
		out.Evidence = ev
		return out, nil
	}
	binding := attest.Binding(exporter, ch.Nonce, api.ControllerBinding)
	r, err := c.self.batchQuote(ctx, ch.PCRs, binding)
	if err != nil {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		c.log.Error("quoting with the controller's TPM", "err", err)
		return out, apiErr(api.CodeUnavailable, "the controller's TPM could not quote")
	}
	var q attest.Quote
	if err := json.Unmarshal(r.quote, &q); err != nil {
		return out, err
	}
	out.Evidence = attest.Encode(attest.Evidence{Version: attest.Version, Quote: q})
	out.Batch = r.batch
	return out, nil
}
