package agent

import (
	"context"
	"slices"
	"time"

	"github.com/statemesh/statemesh/internal/dataplane/firewall"
	"github.com/statemesh/statemesh/internal/netmap"
)

// firewallState is the nftables state a map asks for.
func (a *Agent) firewallState(m netmap.Map) firewall.State {
	s := firewall.StateFor(m, firewall.StateOptions{Interface: a.cfg.Interface, UnderlayAllow: a.cfg.UnderlayAllow, BackbonePrefix: backbonePrefix})
	s.EBPFMark = a.ebpfMark()
	return s
}

// syncFirewall brings the node's nftables table in line with next. With a
// delta that only moved set members or peers, it changes elements; else it
// replaces the table in one transaction.
func (a *Agent) syncFirewall(ctx context.Context, prev, next netmap.Map, d *netmap.Delta) {
	if a.fw == nil {
		return
	}
	a.fwMu.Lock()
	defer a.fwMu.Unlock()
	a.fwMap = next
	var err error
	switch {
	case d != nil && !d.FirewallChanged && d.Interface == nil && d.Self == nil:
		err = a.fw.ApplySets(ctx, d.SetAdd, d.SetDel)
		if err == nil && (len(d.Upsert) > 0 || len(d.Remove) > 0) {
			ps, ns := a.firewallState(prev).Peers, a.firewallState(next).Peers
			if !slices.Equal(ps, ns) {
				err = a.fw.Apply(ctx, a.firewallState(next))
			}
		}
	default:
		err = a.fw.Apply(ctx, a.firewallState(next))
	}
	a.mu.Lock()
	a.fwErr = err
	a.mu.Unlock()
	if err != nil {
		a.log.Error("firewall not applied; retrying with the whole table", "err", err)
		if err := a.fw.Apply(ctx, a.firewallState(next)); err == nil {
			a.mu.Lock()
			a.fwErr = nil
			a.mu.Unlock()
		}
	}
}

// firewallLoop repairs drift: if someone flushes or edits StateMesh's table,
// the agent restores it (and says so) within driftEvery.
func (a *Agent) firewallLoop(ctx context.Context) {
	if a.fw == nil {
		return
	}
	t := time.NewTicker(a.cfg.DriftEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.repairDrift(ctx)
	}
}

// repairDrift restores the table if it no longer matches the last map
// applied to it.
func (a *Agent) repairDrift(ctx context.Context) {
	a.fwMu.Lock()
	defer a.fwMu.Unlock()
	m := a.fwMap
	if m.Interface.Name == "" {
		return
	}
	if err := a.fw.Check(ctx); err != nil {
		a.log.Warn("nftables drift: restoring StateMesh's table", "reason", err)
		if err := a.fw.Apply(ctx, a.firewallState(m)); err != nil {
			a.log.Error("restoring the firewall", "err", err)
			return
		}
		a.mu.Lock()
		a.driftRepairs++
		a.mu.Unlock()
		a.metrics.driftRepairs.Inc()
	}
}
