package controller

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/jointoken"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/topology"
)

// sessionTTL bounds how long a challenge may stay unanswered.
const sessionTTL = time.Minute

// policyFromSpec builds the verifier's policy from the spec's attestation
// section (nil: attestation off).
func policyFromSpec(m *spec.Mesh) (*attest.Policy, time.Duration, error) {
	a := m.Attestation
	if a == nil {
		return nil, 0, nil
	}
	p, err := trustPolicy("attestation", a.EKRoots, a.EKAllowList, a.PCRs, a.Reference)
	if err != nil {
		return nil, 0, err
	}
	d, _ := time.ParseDuration(a.ReattestInterval)
	return p, d, nil
}

// ControllerPolicy is what agents require of the controller's TPM (mutual
// aTLS): the spec's attestation.controller, or nil when it has none.
func ControllerPolicy(m *spec.Mesh) (*attest.Policy, error) {
	if m.Attestation == nil || m.Attestation.Controller == nil {
		return nil, nil
	}
	c := m.Attestation.Controller
	return trustPolicy("attestation.controller", c.EKRoots, c.EKAllowList, c.PCRs, c.Reference)
}

// trustPolicy builds a policy from EK roots (PEM; self-signed ones are
// roots, the others intermediates), an EK allow-list, the PCRs to quote
// and their reference values (hex).
func trustPolicy(at string, roots, allow []string, pcrs []int, ref map[int][]string) (*attest.Policy, error) {
	p := &attest.Policy{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool(), EKAllowList: map[string]bool{}, PCRs: pcrs, Reference: map[int][][]byte{}}
	for i, pemText := range roots {
		certs, err := parsePEMCerts(pemText)
		if err != nil || len(certs) == 0 {
			return nil, fmt.Errorf("%s.ekRoots[%d]: %v", at, i, err)
		}
		for _, c := range certs {
			if c.CheckSignatureFrom(c) == nil {
				p.Roots.AddCert(c)
			} else {
				p.Intermediates.AddCert(c)
			}
		}
	}
	for _, h := range allow {
		p.EKAllowList[h] = true
	}
	for pcr, values := range ref {
		for _, v := range values {
			b, _ := hex.DecodeString(v)
			p.Reference[pcr] = append(p.Reference[pcr], b)
		}
	}
	return p, nil
}

func parsePEMCerts(s string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var blk []byte
		blk, rest = nextPEM(rest)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

func sessionKey(id string) string { return prefixSession + id }

// openSessionKey holds the ID of a node's open re-attestation challenge.
func openSessionKey(node string) string { return prefixOpenSession + node }
func ekKey(hash string) string          { return prefixEK + hash }

func attestErr(err error) *api.Error {
	return apiErr(api.CodeAttestationFailed, "attestation refused: %v", err)
}

// policy returns the attestation policy in force (nil: off).
func (c *Controller) policy() (*attest.Policy, *spec.Mesh, time.Duration) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.attestPolicy, c.mesh, c.reattest
}

// Challenge opens an attestation session. Before enrollment it is
// authenticated by a valid join token; for re-attestation (node != "") by
// the node's certificate, and the node's enrolled AK is used.
func (c *Controller) Challenge(ctx context.Context, node string, req api.AttestChallengeRequest) (api.AttestChallenge, error) {
	now := c.cfg.Now()
	pol, _, interval := c.policy()
	if pol == nil {
		return api.AttestChallenge{}, apiErr(api.CodeInvalidArgument, "attestation is not configured in the mesh spec: nodes enroll without evidence, as weak")
	}
	sess := SessionRecord{ExpiresAt: now.Add(sessionTTL)}
	activate := false
	var checked attest.Checked
	if node == "" {
		tok, err := jointoken.Parse(req.Token)
		if err != nil {
			return api.AttestChallenge{}, apiErr(api.CodeTokenInvalid, "%v", err)
		}
		// The token must be usable now; its use is counted at enrollment.
		var t TokenRecord
		if _, err := c.st.Update(ctx, func(tx store.Tx) error {
			var terr error
			t, terr = checkToken(tx, tok, "", now)
			var ae *api.Error
			if errors.As(terr, &ae) && ae.Code == api.CodePermissionDenied {
				return nil // the role is checked at enrollment
			}
			return terr
		}); err != nil {
			return api.AttestChallenge{}, err
		}
		id, err := attest.DecodeIdentity(req.Identity)
		if err != nil {
			c.log.Warn("attestation refused", "stage", "identity", "reason", err)
			return api.AttestChallenge{}, attestErr(err)
		}
		if checked, err = pol.CheckIdentity(id); err != nil {
			c.log.Warn("attestation refused", "stage", "identity", "token", t.ID, "reason", err)
			return api.AttestChallenge{}, attestErr(err)
		}
		sess.TokenID, sess.AKArea, sess.EKHash = t.ID, checked.AKArea, checked.EKHash
		activate = true
	} else {
		c.mu.RLock()
		n, ok := c.nodes[node]
		c.mu.RUnlock()
		if !ok || len(n.AKArea) == 0 {
			return api.AttestChallenge{}, apiErr(api.CodePermissionDenied, "node %s has no enrolled attestation key (it is weak)", node)
		}
		sess.Node, sess.AKArea, sess.EKHash = node, n.AKArea, n.EKHash
	}
	id := randomText(18)
	ch, secret, err := pol.NewChallenge(checked, id, activate)
	if err != nil {
		return api.AttestChallenge{}, err
	}
	sess.Nonce = ch.Nonce
	if activate {
		h := hashSecret(string(secret))
		sess.SecretHash = h
	}
	if _, err := c.st.Update(ctx, func(tx store.Tx) error {
		if node != "" {
			// One open challenge per node: a new one replaces the last, so
			// a node cannot pile sessions up in the store.
			if kv, err := tx.Get(openSessionKey(node)); err == nil {
				if err := tx.Delete(sessionKey(string(kv.Value))); err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			if err := tx.Put(openSessionKey(node), []byte(id)); err != nil {
				return err
			}
		}
		return tx.Put(sessionKey(id), encode(sess))
	}); err != nil {
		return api.AttestChallenge{}, err
	}
	return api.AttestChallenge{Challenge: attest.Encode(ch), ReattestInterval: int(interval / time.Second)}, nil
}

// consume reads and deletes a session: a session answers one piece of
// evidence, whatever its verdict.
func (c *Controller) consume(ctx context.Context, id string, now time.Time) (SessionRecord, error) {
	var s SessionRecord
	_, err := c.st.Update(ctx, func(tx store.Tx) error {
		kv, err := tx.Get(sessionKey(id))
		if errors.Is(err, store.ErrNotFound) {
			return attestErr(attest.ErrSession)
		}
		if err != nil {
			return err
		}
		if s, err = decode[SessionRecord](kv.Value); err != nil {
			return err
		}
		if s.Node != "" {
			if kv, err := tx.Get(openSessionKey(s.Node)); err == nil && string(kv.Value) == id {
				if err := tx.Delete(openSessionKey(s.Node)); err != nil {
					return err
				}
			}
		}
		return tx.Delete(sessionKey(id))
	})
	if err != nil {
		return s, err
	}
	if now.After(s.ExpiresAt) {
		return s, attestErr(fmt.Errorf("%w: the challenge expired at %s", attest.ErrSession, s.ExpiresAt.Format(time.RFC3339)))
	}
	return s, nil
}

func akKey(area []byte) (crypto.PublicKey, error) {
	pub, err := tpm2.DecodePublic(area)
	if err != nil {
		return nil, err
	}
	return pub.Key()
}

// verifyEnrollment checks enrollment evidence: the session it answers
// (consumed), the activated secret, and the quote bound to exporter, the
// nonce and the node's WireGuard key.
func (c *Controller) verifyEnrollment(ctx context.Context, raw []byte, tokenID string, wgPub netmap.Key, exporter []byte) (SessionRecord, error) {
	s, err := c.checkEnrollmentEvidence(ctx, raw, tokenID, wgPub, exporter)
	c.metrics.attestations.WithLabelValues("enrollment", attestVerdict(err)).Inc()
	return s, err
}

func (c *Controller) checkEnrollmentEvidence(ctx context.Context, raw []byte, tokenID string, wgPub netmap.Key, exporter []byte) (SessionRecord, error) {
	pol, _, _ := c.policy()
	now := c.cfg.Now()
	ev, err := attest.DecodeEvidence(raw)
	if err != nil {
		return SessionRecord{}, attestErr(err)
	}
	s, err := c.consume(ctx, ev.Session, now)
	if err != nil {
		return s, err
	}
	if s.TokenID != tokenID || s.Node != "" {
		return s, attestErr(fmt.Errorf("%w: the session belongs to another enrollment", attest.ErrSession))
	}
	if err := attest.CheckSecret(s.SecretHash, ev.Secret); err != nil {
		return s, attestErr(err)
	}
	ak, err := akKey(s.AKArea)
	if err != nil {
		return s, attestErr(err)
	}
	if err := pol.VerifyQuote(ak, ev.Quote, attest.Binding(exporter, s.Nonce, wgPub[:])); err != nil {
		return s, attestErr(err)
	}
	return s, nil
}

// Reattest verifies a strong node's periodic evidence, bound to the
// connection that carries it. A failure applies the policy's action at
// once.
func (c *Controller) Reattest(ctx context.Context, node string, raw []byte, exporter []byte) error {
	err := c.checkReattestation(ctx, node, raw, exporter)
	c.metrics.attestations.WithLabelValues("reattestation", attestVerdict(err)).Inc()
	return err
}

// attestVerdicts names the verifier's refusals for metrics (bounded).
var attestVerdicts = []struct {
	err  error
	name string
}{
	{attest.ErrMalformed, "malformed"}, {attest.ErrTooLarge, "too_large"}, {attest.ErrEKUntrusted, "ek_untrusted"},
	{attest.ErrEKMismatch, "ek_mismatch"}, {attest.ErrAKAttributes, "ak_attributes"}, {attest.ErrActivation, "activation"},
	{attest.ErrSession, "session"}, {attest.ErrBinding, "binding"}, {attest.ErrSignature, "signature"},
	{attest.ErrPCRSelection, "pcr_selection"}, {attest.ErrPCRDigest, "pcr_digest"}, {attest.ErrPCRValue, "pcr_value"},
	{attest.ErrSHA1Only, "sha1_only"}, {attest.ErrEventLogReplay, "event_log"}, {attest.ErrUnknownEventType, "event_type"},
	{attest.ErrNoTPM, "no_tpm"},
}

func attestVerdict(err error) string {
	if err == nil {
		return "accepted"
	}
	for _, v := range attestVerdicts {
		if errors.Is(err, v.err) {
			return v.name
		}
	}
	return "other"
}

func (c *Controller) checkReattestation(ctx context.Context, node string, raw []byte, exporter []byte) error {
	pol, m, _ := c.policy()
	now := c.cfg.Now()
	c.mu.RLock()
	n, ok := c.nodes[node]
	c.mu.RUnlock()
	if pol == nil || !ok {
		return apiErr(api.CodeNotFound, "no attestation for node %s", node)
	}
	fail := func(err error) error {
		c.log.Warn("re-attestation failed", "node", node, "reason", err)
		if aerr := c.attestationFailed(ctx, node, m, err.Error()); aerr != nil {
			c.log.Error("applying the attestation failure action", "node", node, "err", aerr)
		}
		return attestErr(err)
	}
	ev, err := attest.DecodeEvidence(raw)
	if err != nil {
		return fail(err)
	}
	s, err := c.consume(ctx, ev.Session, now)
	if err != nil {
		return err // an unknown or expired session proves nothing either way
	}
	if s.Node != node {
		return fail(fmt.Errorf("%w: the session belongs to another node", attest.ErrSession))
	}
	ak, err := akKey(n.AKArea)
	if err != nil {
		return fail(err)
	}
	if err := pol.VerifyQuote(ak, ev.Quote, attest.Binding(exporter, s.Nonce, n.PublicKey[:])); err != nil {
		return fail(err)
	}
	_, err = c.st.Update(ctx, func(tx store.Tx) error {
		kv, err := tx.Get(nodeKey(node))
		if err != nil {
			return err
		}
		rec, err := decode[NodeRecord](kv.Value)
		if err != nil {
			return err
		}
		if rec.Class != netmap.ClassStrong || rec.State != topology.StateActive {
			return nil // a failure already acted; only an admin lifts it
		}
		rec.AttestedAt = now
		return tx.Put(nodeKey(node), encode(rec))
	})
	return err
}

// attestationFailed applies the policy's action to a node: quarantine, or
// downgrade to weak (gateways are always quarantined: weak nodes are never
// gateways).
func (c *Controller) attestationFailed(ctx context.Context, node string, m *spec.Mesh, reason string) error {
	action := spec.OnFailureQuarantine
	if m != nil && m.Attestation != nil {
		action = m.Attestation.OnFailure
	}
	rev, err := c.st.Update(ctx, func(tx store.Tx) error {
		kv, err := tx.Get(nodeKey(node))
		if err != nil {
			return err
		}
		rec, err := decode[NodeRecord](kv.Value)
		if err != nil {
			return err
		}
		if action == spec.OnFailureDowngrade && rec.Role != netmap.RoleGateway {
			if rec.Class == netmap.ClassWeak {
				return nil
			}
			rec.Class = netmap.ClassWeak
		} else {
			if rec.State == topology.StateQuarantined {
				return nil
			}
			rec.State = topology.StateQuarantined
		}
		rec.Reason = "attestation failed: " + reason
		return tx.Put(nodeKey(node), encode(rec))
	})
	if err != nil {
		return err
	}
	c.log.Warn("attestation failure action", "node", node, "action", action, "reason", reason, "revision", rev)
	// The caller's answer comes after the action is visible here: whoever
	// asks this replica next sees the node quarantined (or weak).
	return c.WaitRevision(ctx, rev)
}

// SweepSessions deletes the challenges nobody answered before they
// expired (an agent that died mid-attestation, or a client that asks and
// never answers). Every replica sweeps; deleting twice is harmless.
func (c *Controller) SweepSessions(ctx context.Context, now time.Time) error {
	kvs, _, err := c.st.List(ctx, prefixSession)
	if err != nil {
		return err
	}
	var expired []string
	for _, kv := range kvs {
		s, err := decode[SessionRecord](kv.Value)
		if err != nil || now.After(s.ExpiresAt) {
			expired = append(expired, kv.Key)
		}
	}
	for len(expired) > 0 {
		batch := expired[:min(len(expired), 50)]
		expired = expired[len(batch):]
		if _, err := c.st.Update(ctx, func(tx store.Tx) error {
			for _, k := range batch {
				kv, err := tx.Get(k)
				if errors.Is(err, store.ErrNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				s, _ := decode[SessionRecord](kv.Value)
				if s.Node != "" {
					if p, err := tx.Get(openSessionKey(s.Node)); err == nil && string(p.Value) == strings.TrimPrefix(k, prefixSession) {
						if err := tx.Delete(openSessionKey(s.Node)); err != nil {
							return err
						}
					}
				}
				if err := tx.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// sessionSweeper runs SweepSessions every sessionTTL.
func (c *Controller) sessionSweeper(ctx context.Context) {
	t := time.NewTicker(sessionTTL)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := c.SweepSessions(ctx, c.cfg.Now()); err != nil && ctx.Err() == nil {
			c.log.Warn("sweeping expired attestation challenges", "err", err)
		}
	}
}

// attestationMonitor treats strong nodes that stopped re-attesting as
// failed: three intervals without a successful quote.
func (c *Controller) checkAttestationDeadlines(ctx context.Context, now time.Time) {
	pol, m, interval := c.policy()
	if pol == nil || interval == 0 {
		return
	}
	var late []string
	c.mu.RLock()
	grace := c.started
	for name, n := range c.nodes {
		last := n.AttestedAt
		if grace.After(last) {
			last = grace
		}
		if n.Class == netmap.ClassStrong && n.State == topology.StateActive && len(n.AKArea) > 0 && now.Sub(last) > 3*interval {
			late = append(late, name)
		}
	}
	c.mu.RUnlock()
	for _, name := range late {
		if err := c.attestationFailed(ctx, name, m, fmt.Sprintf("no re-attestation for more than %s", 3*interval)); err != nil && ctx.Err() == nil {
			c.log.Error("acting on a missed re-attestation", "node", name, "err", err)
		}
	}
}
