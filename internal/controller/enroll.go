package controller

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/jointoken"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/topology"
)

var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// maxCandidates is how many free slots the in-memory registry proposes to
// an enrollment transaction before it falls back to listing the slots.
const maxCandidates = 8

func parseEndpoint(field, s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, apiErr(api.CodeInvalidArgument, "%s %q: write IP:port (e.g. 192.0.2.10:51820, or [2001:db8::10]:51820 for IPv6)", field, s)
	}
	return ap, nil
}

// Enroll admits a node with a join token: it checks the token, allocates an
// address slot in the token's cluster (or region, for gateways), signs the
// node's certificate, and writes the node, its slot and the token's use
// count in one transaction.
//
// With attestation configured, a node either brings evidence answering a
// challenge from Challenge, bound to exporter (the TLS exporter value of the
// connection carrying the request) and is admitted as strong, or brings
// none and is admitted as weak only where the spec allows it (never as a
// gateway). Evidence that fails verification is refused, never weak.
func (c *Controller) Enroll(ctx context.Context, req api.EnrollRequest, exporter []byte) (api.EnrollResponse, error) {
	resp, err := c.enroll(ctx, req, exporter)
	c.metrics.enrollments.WithLabelValues(errCode(err)).Inc()
	if err != nil {
		var tokenID string
		if t, perr := jointoken.Parse(req.Token); perr == nil {
			tokenID = t.ID
		}
		certKey, _ := CSRKeyFingerprint(req.CSR)
		c.auditRefused(ctx, "enrollment", req.Name, tokenID, req.PublicKey, certKey, err)
	}
	return resp, err
}

func (c *Controller) enroll(ctx context.Context, req api.EnrollRequest, exporter []byte) (api.EnrollResponse, error) {
	now := c.cfg.Now()
	if !nodeNameRE.MatchString(req.Name) {
		return api.EnrollResponse{}, apiErr(api.CodeInvalidArgument, "node name %q: use lowercase letters, digits and '-', at most 63 characters", req.Name)
	}
	switch req.Role {
	case netmap.RoleNode, netmap.RoleOperator, netmap.RoleGateway, netmap.RoleHost:
	default:
		return api.EnrollResponse{}, apiErr(api.CodeInvalidArgument, "role %q: use node, operator, gateway or host", req.Role)
	}
	if req.PublicKey.IsZero() {
		return api.EnrollResponse{}, apiErr(api.CodeInvalidArgument, "publicKey is missing")
	}
	if err := checkPublicKey(req.PublicKey); err != nil {
		return api.EnrollResponse{}, err
	}
	ep, err := parseEndpoint("endpoint", req.Endpoint)
	if err != nil {
		return api.EnrollResponse{}, err
	}
	pep, err := parseEndpoint("publicEndpoint", req.PublicEndpoint)
	if err != nil {
		return api.EnrollResponse{}, err
	}
	tok, err := jointoken.Parse(req.Token)
	if err != nil {
		return api.EnrollResponse{}, apiErr(api.CodeTokenInvalid, "%v", err)
	}
	if tok.CAPin != c.ca.Pin() {
		return api.EnrollResponse{}, apiErr(api.CodeTokenInvalid, "the token was issued by another controller CA")
	}
	if req.CSR == "" {
		return api.EnrollResponse{}, apiErr(api.CodeInvalidArgument, "csr is missing")
	}
	if err := spec.CheckLabels(req.Labels); err != nil {
		return api.EnrollResponse{}, apiErr(api.CodeInvalidArgument, "labels: %v", err)
	}

	c.mu.RLock()
	p := c.plan
	c.mu.RUnlock()
	if p == nil {
		return api.EnrollResponse{}, apiErr(api.CodeNoSpec, "no spec has been applied")
	}
	pol, mesh, _ := c.policy()
	var attested *SessionRecord
	if len(req.Evidence) > 0 {
		if pol == nil {
			return api.EnrollResponse{}, apiErr(api.CodeInvalidArgument, "evidence given, but attestation is not configured in the mesh spec")
		}
		s, err := c.verifyEnrollment(ctx, req.Evidence, tok.ID, req.PublicKey, exporter)
		if err != nil {
			return api.EnrollResponse{}, err
		}
		attested = &s
	}

	certKey, err := CSRKeyFingerprint(req.CSR)
	if err != nil {
		return api.EnrollResponse{}, apiErr(api.CodeInvalidArgument, "%v", err)
	}
	var rec NodeRecord
	var certPEM string
	var retry bool
	rev, err := c.st.Update(ctx, func(tx store.Tx) error {
		retry = false
		if kv, err := tx.Get(nodeKey(req.Name)); err == nil {
			old, err := decode[NodeRecord](kv.Value)
			if err != nil {
				return err
			}
			if err := sameEnrollment(tx, &old, tok, req, certKey, attested); err != nil {
				return err
			}
			// The same node enrolling again because it lost our answer:
			// it proves so with the key of its first request (the CSR is
			// signed with it). Same record, fresh certificate.
			rec, retry = old, true
			certPEM, rec.CertSerial, err = c.ca.SignNode(req.CSR, rec.Name, now, c.cfg.CertTTL)
			if err != nil {
				return apiErr(api.CodeInvalidArgument, "%v", err)
			}
			return tx.Put(nodeKey(rec.Name), encode(rec))
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		t, err := checkToken(tx, tok, req.Role, now)
		if err != nil {
			return err
		}
		if pol != nil && attested == nil {
			if req.Role == netmap.RoleGateway {
				return apiErr(api.CodeAttestationFailed, "gateways must be strong: enroll %s with TPM evidence (--tpm)", req.Name)
			}
			if !mesh.AdmitsWithoutTPM(t.Region, t.Cluster) {
				return apiErr(api.CodeAttestationFailed, "cluster %s/%s admits only nodes with TPM evidence (set admitWithoutTPM to admit them as weak)", t.Region, t.Cluster)
			}
		}
		if err := claimWGKey(tx, req.PublicKey, nodeOwner(req.Name)); err != nil {
			return err
		}
		slot, err := c.allocateSlot(tx, p, t.Region, t.Cluster, now)
		if err != nil {
			return err
		}
		rec = NodeRecord{
			Name: req.Name, Region: t.Region, Cluster: t.Cluster, Role: req.Role,
			Class: netmap.ClassWeak, State: topology.StateActive,
			PublicKey: req.PublicKey, Slot: slot, Endpoint: ep, PublicEndpoint: pep,
			TokenID: t.ID, EnrolledAt: now, Labels: req.Labels,
		}
		if attested != nil {
			if kv, err := tx.Get(ekKey(attested.EKHash)); err == nil && string(kv.Value) != req.Name {
				if _, err := tx.Get(nodeKey(string(kv.Value))); err == nil {
					return apiErr(api.CodeAlreadyExists, "this TPM is already enrolled as node %s", kv.Value)
				}
			}
			rec.Class, rec.AKArea, rec.EKHash, rec.AttestedAt = netmap.ClassStrong, attested.AKArea, attested.EKHash, now
			if err := tx.Put(ekKey(attested.EKHash), []byte(req.Name)); err != nil {
				return err
			}
		}
		if err := assignAddresses(&rec, p); err != nil {
			return err
		}
		certPEM, rec.CertSerial, err = c.ca.SignNode(req.CSR, rec.Name, now, c.cfg.CertTTL)
		if err != nil {
			return apiErr(api.CodeInvalidArgument, "%v", err)
		}
		rec.CertKey = certKey
		t.Used++
		if err := tx.Put(tokenKey(t.ID), encode(t)); err != nil {
			return err
		}
		if err := tx.Put(slotKey(rec.Region, rec.Cluster, slot), encode(SlotRecord{Node: rec.Name})); err != nil {
			return err
		}
		return tx.Put(nodeKey(rec.Name), encode(rec))
	})
	if err != nil {
		return api.EnrollResponse{}, err
	}
	c.auditIssued(ctx, map[bool]string{false: "enrollment", true: "enrollment retry"}[retry], &rec, tok.ID)
	c.log.Info("node enrolled", "node", rec.Name, "region", rec.Region, "cluster", rec.Cluster, "role", rec.Role, "overlay", rec.OverlayIPv4, "revision", rev)
	// Read your writes: the node's next call (its map, its status) must
	// find it in the registry. The enrollment is committed either way.
	if err := c.WaitRevision(ctx, rev); err != nil {
		c.log.Warn("enrolled node not yet in the registry when the caller left", "node", rec.Name, "err", err)
	}
	return api.EnrollResponse{Node: nodeView(&rec, HealthRecord{}), Certificate: certPEM, CA: c.ca.CertPEM(), Revision: rev}, nil
}

// sameEnrollment decides whether an enrollment for a name that is already
// enrolled is that node's own retry (it lost the answer): the same join
// token, the same WireGuard key, and a certificate request signed with the
// key of the request that enrolled it (proof of possession: only that
// node holds it). A strong node also brings fresh evidence from the same
// TPM. Anything else is refused: an enrolled node renews its certificate
// with its current one, and a node that lost its identity is admitted
// again only after an admin removes it.
func sameEnrollment(tx store.Tx, old *NodeRecord, tok jointoken.Token, req api.EnrollRequest, certKey KeyDigest, attested *SessionRecord) error {
	enrolled := func(why string) error {
		return apiErr(api.CodeAlreadyExists, "node %q is already enrolled (%s). An enrolled node renews its certificate with its current one (POST /v1/node/renew) and never enrolls again; if it lost its identity, an admin removes it first (statemesh node remove %s)", req.Name, why, req.Name)
	}
	if _, err := loadToken(tx, tok); err != nil {
		return err
	}
	switch {
	case old.TokenID != tok.ID:
		return enrolled("with another join token")
	case old.PublicKey != req.PublicKey:
		return enrolled("with another WireGuard key")
	case old.CertKey.IsZero() || subtle.ConstantTimeCompare(old.CertKey[:], certKey[:]) != 1:
		return enrolled("the certificate request is not signed with the key it enrolled with")
	case old.State != topology.StateActive:
		return apiErr(api.CodeQuarantined, "node %q is %s: %s", req.Name, old.State, old.Reason)
	case old.Class == netmap.ClassStrong && (attested == nil || attested.EKHash != old.EKHash):
		return apiErr(api.CodeAttestationFailed, "node %q is strong: enrolling again needs fresh evidence from the same TPM", req.Name)
	}
	return nil
}

// assignAddresses fills a node's addresses from its slot.
func assignAddresses(rec *NodeRecord, p *plan.Plan) error {
	if rec.Role == netmap.RoleGateway {
		r, ok := p.Region(rec.Region)
		if !ok || rec.Slot >= len(r.Gateways) {
			return apiErr(api.CodeClusterFull, "region %s has no gateway slot %d", rec.Region, rec.Slot)
		}
		rec.OverlayIPv4, rec.OverlayIPv6 = r.Gateways[rec.Slot].OverlayIPv4, r.Gateways[rec.Slot].OverlayIPv6
		return nil
	}
	cl, ok := p.Cluster(rec.Region, rec.Cluster)
	if !ok {
		return apiErr(api.CodeNotFound, "cluster %s/%s is not in the plan", rec.Region, rec.Cluster)
	}
	rec.OverlayIPv4, rec.OverlayIPv6, rec.PodIPv4, rec.PodIPv6 = cl.NodeAddresses(rec.Slot)
	return nil
}

// slotLimit is how many slots a cluster (or a region's gateways) has.
func slotLimit(p *plan.Plan, region, cluster string) (int, error) {
	if cluster == "" {
		r, ok := p.Region(region)
		if !ok {
			return 0, apiErr(api.CodeNotFound, "region %q is not in the plan", region)
		}
		return len(r.Gateways), nil
	}
	cl, ok := p.Cluster(region, cluster)
	if !ok {
		return 0, apiErr(api.CodeNotFound, "cluster %s/%s is not in the plan", region, cluster)
	}
	return cl.Slots(), nil
}

// allocateSlot finds a free address slot inside the transaction. The
// registry proposes candidates; each is confirmed by reading its slot key in
// the transaction (so concurrent enrollments on other replicas conflict and
// retry rather than share a slot). When every candidate is taken, the
// cluster's slots are listed in the transaction to decide authoritatively.
func (c *Controller) allocateSlot(tx store.Tx, p *plan.Plan, region, cluster string, now time.Time) (int, error) {
	limit, err := slotLimit(p, region, cluster)
	if err != nil {
		return 0, err
	}
	for _, n := range c.slotCandidates(region, cluster, limit, now) {
		kv, err := tx.Get(slotKey(region, cluster, n))
		if errors.Is(err, store.ErrNotFound) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
		if s, err := decode[SlotRecord](kv.Value); err == nil && s.free(now, c.cfg.SlotGrace) {
			return n, nil
		}
	}
	kvs, err := tx.List(slotPrefix(region, cluster))
	if err != nil {
		return 0, err
	}
	taken := make(map[int]bool, len(kvs))
	for _, kv := range kvs {
		_, _, n, ok := parseSlotKey(kv.Key)
		s, err := decode[SlotRecord](kv.Value)
		if ok && (err != nil || !s.free(now, c.cfg.SlotGrace)) {
			taken[n] = true
		}
	}
	for n := range limit {
		if !taken[n] {
			return n, nil
		}
	}
	what := fmt.Sprintf("cluster %s/%s", region, cluster)
	if cluster == "" {
		what = fmt.Sprintf("region %s's gateways", region)
	}
	return 0, apiErr(api.CodeClusterFull, "%s is full: all %d address slots are in use (or released less than %s ago); raise maxNodes (or gateways) in the spec, or remove nodes", what, limit, c.cfg.SlotGrace)
}

// slotCandidates proposes free slots from the registry.
func (c *Controller) slotCandidates(region, cluster string, limit int, now time.Time) []int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	used := c.slots[region+"/"+cluster]
	var out []int
	for n := 0; n < limit && len(out) < maxCandidates; n++ {
		if used.free(n, now, c.cfg.SlotGrace) {
			out = append(out, n)
		}
	}
	return out
}
