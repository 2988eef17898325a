package controller

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/topology"
)

// NetmakerConfig connects the controller to a Netmaker server it keeps in
// line with the registry (docs/netmaker.md).
type NetmakerConfig struct {
	Client *netmaker.Client
	// Networks maps a region to its Netmaker network and address range.
	Networks map[string]netmaker.NetworkSpec
	// Every is the reconcile interval (default 10 s); Grace how long an
	// unattested pending host waits before it is rejected (default 5 min).
	Every time.Duration
	Grace time.Duration
}

// netmakerState is what the loop remembers and reports.
type netmakerState struct {
	seen   map[string]string    // public key → node, of attested nodes seen
	gone   map[string]time.Time // public key → when StateMesh dropped it
	status api.BackendStatus
}

// netmakerLoop reconciles the Netmaker server every interval and right
// after the registry changes a node's state.
func (c *Controller) netmakerLoop(ctx context.Context) {
	cfg := c.cfg.Netmaker
	every := cfg.Every
	if every == 0 {
		every = 10 * time.Second
	}
	r := &netmaker.Reconciler{C: cfg.Client, Now: c.cfg.Now}
	st := &netmakerState{seen: map[string]string{}, gone: map[string]time.Time{}}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		d, err := c.netmakerDesired(st)
		var rep netmaker.Report
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, every+30*time.Second)
			rep, err = r.Reconcile(pctx, d)
			cancel()
		}
		c.recordNetmaker(st, rep, err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.netmakerKick:
		}
	}
}

// kickNetmaker asks for a pass now (a node was quarantined or removed).
func (c *Controller) kickNetmaker() {
	if c.netmakerKick == nil {
		return
	}
	select {
	case c.netmakerKick <- struct{}{}:
	default:
	}
}

// netmakerDesired builds the state Netmaker should have from the registry.
func (c *Controller) netmakerDesired(st *netmakerState) (netmaker.Desired, error) {
	cfg := c.cfg.Netmaker
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.plan == nil {
		return netmaker.Desired{}, fmt.Errorf("no spec applied")
	}
	now := c.cfg.Now()
	d := netmaker.Desired{Attested: map[string]string{}, Removed: map[string]time.Time{}, Grace: cfg.Grace}
	var clusters []netmaker.Cluster
	for _, r := range c.plan.Regions {
		ns, ok := cfg.Networks[r.Name]
		if !ok {
			continue
		}
		if ns.MTU == 0 {
			if l, ok := r.Role(netmap.RoleNode); ok {
				ns.MTU = l.WireGuardMTU
			}
		}
		d.Networks = append(d.Networks, ns)
		for _, cl := range r.Clusters {
			clusters = append(clusters, netmaker.Cluster{Region: r.Name, Name: cl.Name, Network: ns.Name})
		}
	}
	var pol = c.mesh.Policy
	acls, tags, err := netmaker.MapPolicy(pol, clusters)
	if err != nil {
		return d, fmt.Errorf("the policy cannot be written in Netmaker: %w", err)
	}
	d.ACLs = acls
	for _, cl := range clusters {
		d.Keys = append(d.Keys, netmaker.KeySpec{Region: cl.Region, Cluster: cl.Name, Network: cl.Network, Tags: tags[cl.Region+"/"+cl.Name]})
	}
	current := map[string]bool{}
	for _, n := range c.nodes {
		k := n.PublicKey.String()
		current[k] = true
		switch {
		case n.State == topology.StateActive && n.Class == netmap.ClassStrong:
			d.Attested[k] = n.Name
			st.seen[k] = n.Name
			delete(st.gone, k)
		case st.seen[k] != "":
			if _, ok := st.gone[k]; !ok {
				st.gone[k] = c.lastEventLocked(n.Name, now)
			}
		}
	}
	for k, name := range st.seen {
		if !current[k] {
			if _, ok := st.gone[k]; !ok {
				st.gone[k] = c.lastEventLocked(name, now)
			}
		}
	}
	for k, at := range st.gone {
		d.Removed[k] = at
	}
	return d, nil
}

// lastEventLocked is the time of the latest event about a node (its
// quarantine or removal), or fallback.
func (c *Controller) lastEventLocked(name string, fallback time.Time) time.Time {
	for i := len(c.events) - 1; i >= 0; i-- {
		if c.events[i].Subject == name && (c.events[i].Kind == "state" || c.events[i].Kind == "removed") {
			return c.events[i].Time
		}
	}
	return fallback
}

func (c *Controller) recordNetmaker(st *netmakerState, rep netmaker.Report, err error) {
	now := c.cfg.Now()
	s := &st.status
	s.Name, s.LastSync = "netmaker", now
	s.Healthy, s.Error = err == nil, ""
	if err != nil {
		s.Error = err.Error()
		c.log.Warn("netmaker reconcile", "err", err)
	}
	s.Approved += len(rep.Approved)
	s.Rejected += len(rep.Rejected)
	s.Removed += len(rep.Removed)
	for host, took := range rep.Removed {
		c.log.Info("netmaker host removed", "host", host, "after", took.Round(time.Millisecond))
	}
	for _, w := range rep.Writes {
		c.log.Info("netmaker", "change", w)
	}
	c.mu.Lock()
	c.backends = []api.BackendStatus{*s}
	c.mu.Unlock()
}

// backendsLocked returns the backends' status for Status.
func (c *Controller) backendsLocked() []api.BackendStatus {
	return slices.Clone(c.backends)
}
