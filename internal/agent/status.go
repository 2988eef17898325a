package agent

import (
	"context"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// Status is the agent's own view of its data plane.
func (a *Agent) Status() api.StatusReport {
	a.mu.Lock()
	m, ok, paths, reach := a.prev, a.ok, a.paths, a.reach
	a.mu.Unlock()
	r := api.StatusReport{AppliedRevision: m.Revision, Peers: len(m.Peers), Healthy: ok, Firewall: a.firewallStatus(), Dataplane: a.dataplaneStatus(), Paths: paths, Time: time.Now(), WAN: reach}
	if a.cfg.AttestOnly {
		r.Healthy, r.Message = true, "attest-only: netclient manages WireGuard on this host"
		return r
	}
	if a.dev == nil {
		r.Healthy = false
		r.Message = "no map applied yet"
		return r
	}
	st, err := a.dev.Status()
	if err != nil {
		r.Healthy = false
		r.Message = err.Error()
		return r
	}
	names := map[netmap.Key]netmap.Peer{}
	for _, p := range m.Peers {
		names[p.PublicKey] = p
	}
	now := time.Now()
	for _, s := range st {
		r.RxBytes += s.RxBytes
		r.TxBytes += s.TxBytes
		p, ok := names[s.PublicKey]
		if !ok || p.PersistentKeepalive == 0 {
			continue
		}
		if s.LastHandshake.IsZero() || now.Sub(s.LastHandshake) > a.cfg.StaleAfter {
			r.StalePeers = append(r.StalePeers, p.Name)
		}
	}
	// A BIRD-mode gateway without a running BIRD cannot route: it reports
	// itself unhealthy, so the controller moves its clusters away.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if r.Routing = a.routingStatus(ctx, m); r.Routing != nil && r.Routing.BIRD != "running" {
		r.Healthy = false
		r.Message = "dynamic routing: " + r.Routing.BIRD
	}
	return r
}

func (a *Agent) statusLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.StatusEvery)
	defer t.Stop()
	sent := -1 // probe round whose paths the controller has
	for {
		rctx, cancel := context.WithTimeout(ctx, a.cfg.StatusEvery+time.Second)
		r := a.Status()
		a.mu.Lock()
		round := a.pathsRound
		a.mu.Unlock()
		if round == sent {
			r.Paths = nil // unchanged since the last report: the controller keeps them
		}
		if err := a.client().ReportStatus(rctx, r); err != nil {
			if ctx.Err() == nil {
				a.log.Debug("status report failed", "err", err)
			}
		} else {
			sent = round
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.reportKick:
			// Let BIRD settle the sessions it is changing (BFD brings
			// all sessions to a dead peer down within milliseconds).
			time.Sleep(20 * time.Millisecond)
		}
	}
}
