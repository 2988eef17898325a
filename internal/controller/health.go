package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/topology"
)

// statusEntry is the last status a node reported to this replica.
type statusEntry struct {
	at     time.Time
	report api.StatusReport
}

// AuthenticateNode checks that a node's client certificate is its current
// one and that the node still exists: removal takes effect at once.
func (c *Controller) AuthenticateNode(name, serial string) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n, ok := c.nodes[name]
	if !ok {
		return apiErr(api.CodeUnauthenticated, "node %q is not enrolled (removed?)", name)
	}
	if s, err := ParseCertSerial(serial); err != nil || n.CertSerial != s {
		return apiErr(api.CodeUnauthenticated, "certificate of node %q was superseded", name)
	}
	if n.State != topology.StateActive {
		// A quarantined node's certificate stops working at once: no map,
		// no status, no renewal, no attestation. Only an admin's release
		// (or removal) changes that.
		return apiErr(api.CodeQuarantined, "node %q is %s: %s", name, n.State, n.Reason)
	}
	return nil
}

// ReportStatus records a node's status. For a gateway it is also the
// heartbeat that keeps it designated.
func (c *Controller) ReportStatus(ctx context.Context, name string, r api.StatusReport) error {
	now := c.cfg.Now()
	r = r.Clean() // printed on admins' terminals and the dashboard
	c.mu.Lock()
	n, ok := c.nodes[name]
	if !ok {
		c.mu.Unlock()
		return apiErr(api.CodeNotFound, "no node %q", name)
	}
	if r.Paths == nil {
		r.Paths = c.status[name].report.Paths // reports carry paths only after a probe round
	}
	c.status[name] = statusEntry{at: now, report: r}
	gateway := n.Role == netmap.RoleGateway && n.State == topology.StateActive
	h := c.health[name]
	var votedDown map[string]bool
	if gateway {
		votedDown = c.recordBFDVotesLocked(name, r.Routing, now)
	}
	if down, why := c.votedDownLocked(name, now); down && r.Healthy {
		// Its region's gateways cannot reach it: a heartbeat over the
		// management network does not make it fit to carry traffic.
		r.Healthy, r.Message = false, why
	}
	if gateway && r.Healthy && r.WAN != nil && r.WAN.Cut {
		// It reaches no other region (baseline mode, its WAN link cut):
		// unfit for its clusters if a gateway of its region still can.
		if peer, ok := c.regionPeerReachesLocked(n.Region, name, now); ok {
			r.Healthy, r.Message = false, fmt.Sprintf("WAN: reaches none of the %d other regions' gateways it probes, while %s does", r.WAN.Probed, peer)
		}
	}
	c.mu.Unlock()
	for g, down := range votedDown {
		if down {
			c.markVotedDown(ctx, g, now)
		}
	}
	if !gateway {
		return nil
	}
	// Write the heartbeat when health flips, and otherwise often enough
	// that every replica's monitor sees it alive.
	if h.Healthy == r.Healthy && now.Sub(h.LastHeartbeat) < c.cfg.HeartbeatTimeout/3 {
		return nil
	}
	_, err := c.st.Update(ctx, func(tx store.Tx) error {
		cur := HealthRecord{}
		if kv, err := tx.Get(healthKey(name)); err == nil {
			cur, _ = decode[HealthRecord](kv.Value)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		next := HealthRecord{Healthy: r.Healthy, LastHeartbeat: now, Since: cur.Since, Reason: r.Message}
		if cur.Healthy != r.Healthy || cur.Since.IsZero() {
			next.Since = now
		}
		if next.Reason == "" && r.Healthy {
			next.Reason = "heartbeat"
		}
		return tx.Put(healthKey(name), encode(next))
	})
	if err != nil {
		return fmt.Errorf("recording heartbeat: %w", err)
	}
	return nil
}

// healthMonitor marks gateways unhealthy when their heartbeats stop. Every
// replica runs it; the transaction re-reads the record so that a heartbeat
// that arrived meanwhile wins.
func (c *Controller) healthMonitor(ctx context.Context) {
	t := time.NewTicker(c.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := c.cfg.Now()
		c.checkAttestationDeadlines(ctx, now)
		var stale []string
		c.mu.Lock()
		for name, h := range c.health {
			last := h.LastHeartbeat
			if c.started.After(last) {
				last = c.started
			}
			silent := now.Sub(last)
			if !h.Healthy || silent <= c.cfg.HeartbeatTimeout {
				continue
			}
			if silent <= vouchFactor*c.cfg.HeartbeatTimeout && c.vouchedLocked(name, now) {
				if !c.vouchLogged[name] {
					c.vouchLogged[name] = true
					c.log.Info("gateway silent but its region's BFD sees it up: it stays designated", "gateway", name,
						"silent", silent.Round(time.Millisecond), "for at most", vouchFactor*c.cfg.HeartbeatTimeout)
				}
				continue
			}
			stale = append(stale, name)
		}
		for name := range c.vouchLogged {
			if h, ok := c.health[name]; ok && now.Sub(h.LastHeartbeat) <= c.cfg.HeartbeatTimeout {
				delete(c.vouchLogged, name) // heard from again
			}
		}
		c.mu.Unlock()
		for _, name := range stale {
			_, err := c.st.Update(ctx, func(tx store.Tx) error {
				kv, err := tx.Get(healthKey(name))
				if err != nil {
					return err
				}
				h, err := decode[HealthRecord](kv.Value)
				last := h.LastHeartbeat
				if c.started.After(last) {
					last = c.started
				}
				if err != nil || !h.Healthy || now.Sub(last) <= c.cfg.HeartbeatTimeout {
					return err
				}
				h.Healthy = false
				h.Since = now
				h.Reason = fmt.Sprintf("no heartbeat for %s", now.Sub(h.LastHeartbeat).Round(time.Millisecond))
				return tx.Put(healthKey(name), encode(h))
			})
			if err != nil && ctx.Err() == nil && !errors.Is(err, store.ErrNotFound) {
				c.log.Warn("marking gateway unhealthy", "gateway", name, "err", err)
			}
		}
	}
}

// Streams returns the number of open watch streams on this replica.
func (c *Controller) Streams() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.hub.len()
}

// regionPeerReachesLocked returns a gateway of region other than g that
// is healthy and whose fresh report says it reaches other regions.
func (c *Controller) regionPeerReachesLocked(region, g string, now time.Time) (string, bool) {
	if c.ix == nil {
		return "", false
	}
	for _, peer := range c.ix.Gateways(region) {
		if peer == g || !c.health[peer].Healthy {
			continue
		}
		st, ok := c.status[peer]
		if !ok || now.Sub(st.at) > c.cfg.HeartbeatTimeout || st.report.WAN == nil {
			continue
		}
		if w := st.report.WAN; !w.Cut && w.Reached > 0 {
			return peer, true
		}
	}
	return "", false
}

// Renew issues a node a new client certificate for a new key (before the
// old one expires). The old certificate stops working at once: the record
// holds the serial of the current one.
func (c *Controller) Renew(ctx context.Context, node, csrPEM string) (string, error) {
	now := c.cfg.Now()
	certKey, err := CSRKeyFingerprint(csrPEM)
	if err != nil {
		return "", apiErr(api.CodeInvalidArgument, "%v", err)
	}
	var certPEM string
	var rec NodeRecord
	rev, err := c.st.Update(ctx, func(tx store.Tx) error {
		kv, err := tx.Get(nodeKey(node))
		if errors.Is(err, store.ErrNotFound) {
			return apiErr(api.CodeUnauthenticated, "node %q is not enrolled (removed?)", node)
		}
		if err != nil {
			return err
		}
		if rec, err = decode[NodeRecord](kv.Value); err != nil {
			return err
		}
		if rec.State != topology.StateActive {
			return apiErr(api.CodeQuarantined, "node %q is %s: %s", node, rec.State, rec.Reason)
		}
		certPEM, rec.CertSerial, err = c.ca.SignNode(csrPEM, node, now, c.cfg.CertTTL)
		if err != nil {
			return apiErr(api.CodeInvalidArgument, "%v", err)
		}
		rec.CertKey = certKey
		return tx.Put(nodeKey(node), encode(rec))
	})
	if err != nil {
		c.auditRefused(ctx, "renewal", node, "", netmap.Key{}, certKey, err)
		return "", err
	}
	c.auditIssued(ctx, "renewal", &rec, rec.TokenID)
	return certPEM, c.WaitRevision(ctx, rev)
}

// votedDownWriteTimeout bounds the write of a BFD verdict.
const votedDownWriteTimeout = 10 * time.Second

// markVotedDown records gateway g unhealthy because its region's gateways
// see it down over BFD (see bfdvotes.go). The verdict is the controller's,
// not the reporter's request's: the write outlives the report (an agent
// whose report timed out under load cancelled it, and the verdict was
// lost: the dead gateway stayed designated until its heartbeat timeout).
// A write that fails anyway clears the verdict, so the next report that
// still sees g down tries again.
func (c *Controller) markVotedDown(ctx context.Context, g string, now time.Time) {
	c.mu.RLock()
	down, why := c.votedDownLocked(g, now)
	c.mu.RUnlock()
	if !down {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), votedDownWriteTimeout)
	defer cancel()
	_, err := c.st.Update(ctx, func(tx store.Tx) error {
		cur := HealthRecord{}
		if kv, err := tx.Get(healthKey(g)); err == nil {
			cur, _ = decode[HealthRecord](kv.Value)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if !cur.Healthy {
			return nil
		}
		return tx.Put(healthKey(g), encode(HealthRecord{Healthy: false, LastHeartbeat: cur.LastHeartbeat, Since: now, Reason: why}))
	})
	if err != nil {
		c.log.Warn("recording a gateway its peers see down", "gateway", g, "err", err)
		c.mu.Lock()
		c.bfdDown[g] = false
		c.mu.Unlock()
		return
	}
	c.log.Info("gateway down by its region's BFD", "gateway", g, "reason", why)
}
