package controller

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
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
	// KeyTTL, when set, makes the clusters' enrollment keys expire after
	// it; each is replaced by a new one once less than a fifth is left.
	KeyTTL time.Duration
}

// NetmakerGatewayLabel marks a host (role host, netclient) as a candidate
// Netmaker gateway of its region's network: the first attested candidate
// present in the network (by name) is the gateway, and the next takes
// over when it is quarantined or removed.
const NetmakerGatewayLabel = "netmaker-gateway"

// netmakerState is what the loop remembers and reports. seen and gone
// are kept in the store (prefixNetmaker) so that a restarted controller
// still removes the hosts of nodes dropped before it restarted.
type netmakerState struct {
	seen   map[string]string    // public key → node, of attested nodes seen
	gone   map[string]time.Time // public key → when StateMesh dropped it
	status api.BackendStatus

	// saved is what the store holds (key → record), to write changes only.
	saved map[string]netmakerDecision
}

// netmakerDecision is one host's record in the store: the node that owns
// the key and, once StateMesh dropped it, when.
type netmakerDecision struct {
	Node string    `json:"node"`
	Gone time.Time `json:"gone,omitzero"`
}

// prefixNetmaker holds netmakerDecisions by public key (base64url, so the
// key has no slash).
const prefixNetmaker = "netmaker/hosts/"

func netmakerStoreKey(pub string) string {
	b, err := base64.StdEncoding.DecodeString(pub)
	if err != nil {
		return prefixNetmaker + base64.RawURLEncoding.EncodeToString([]byte(pub))
	}
	return prefixNetmaker + base64.RawURLEncoding.EncodeToString(b)
}

// loadNetmakerState reads the decisions a previous controller kept.
func (c *Controller) loadNetmakerState(ctx context.Context) (*netmakerState, error) {
	st := &netmakerState{seen: map[string]string{}, gone: map[string]time.Time{}, saved: map[string]netmakerDecision{}}
	kvs, _, err := c.cfg.Store.List(ctx, prefixNetmaker)
	if err != nil {
		return st, err
	}
	for _, kv := range kvs {
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(kv.Key, prefixNetmaker))
		if err != nil {
			continue
		}
		d, err := decode[netmakerDecision](kv.Value)
		if err != nil || d.Node == "" {
			continue
		}
		pub := base64.StdEncoding.EncodeToString(raw)
		st.seen[pub] = d.Node
		if !d.Gone.IsZero() {
			st.gone[pub] = d.Gone
		}
		st.saved[pub] = d
	}
	return st, nil
}

// saveNetmakerState writes the decisions that changed since the last save.
func (c *Controller) saveNetmakerState(ctx context.Context, st *netmakerState) error {
	want := map[string]netmakerDecision{}
	for k, node := range st.seen {
		want[k] = netmakerDecision{Node: node, Gone: st.gone[k]}
	}
	var put, del []string
	for k, d := range want {
		if old, ok := st.saved[k]; !ok || old.Node != d.Node || !old.Gone.Equal(d.Gone) {
			put = append(put, k)
		}
	}
	for k := range st.saved {
		if _, ok := want[k]; !ok {
			del = append(del, k)
		}
	}
	if len(put)+len(del) == 0 {
		return nil
	}
	_, err := c.cfg.Store.Update(ctx, func(tx store.Tx) error {
		for _, k := range put {
			if err := tx.Put(netmakerStoreKey(k), encode(want[k])); err != nil {
				return err
			}
		}
		for _, k := range del {
			if err := tx.Delete(netmakerStoreKey(k)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("keeping the Netmaker removal decisions in the store: %w", err)
	}
	st.saved = want
	return nil
}

// netmakerLoop reconciles the Netmaker server every interval and right
// after the registry changes a node's state.
func (c *Controller) netmakerLoop(ctx context.Context) {
	cfg := c.cfg.Netmaker
	every := cfg.Every
	if every == 0 {
		every = 10 * time.Second
	}
	r := &netmaker.Reconciler{C: cfg.Client, Now: c.cfg.Now, Log: c.log.With("backend", "netmaker")}
	st, err := c.loadNetmakerState(ctx)
	for err != nil {
		// Without the decisions kept, hosts dropped before a restart
		// would stay: no pass runs until they are read.
		c.log.Warn("netmaker: reading the removal decisions from the store", "err", err)
		c.recordNetmaker(st, netmaker.Report{}, fmt.Errorf("reading the removal decisions from the store: %w", err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		st, err = c.loadNetmakerState(ctx)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		d, policyErr, err := c.netmakerDesired(st)
		var saveErr error
		if err == nil {
			// Kept before Netmaker is touched, so a restart does not
			// forget a decision; a store that fails is reported, and
			// the removal goes on from memory.
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			saveErr = c.saveNetmakerState(sctx, st)
			cancel()
		}
		var rep netmaker.Report
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, every+30*time.Second)
			rep, err = r.Reconcile(pctx, d)
			cancel()
		}
		c.recordNetmaker(st, rep, errors.Join(policyErr, saveErr, err))
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
// A policy Netmaker cannot express is reported (policyErr) and its tags and
// ACLs are left as they are, while admission and removal go on.
func (c *Controller) netmakerDesired(st *netmakerState) (d netmaker.Desired, policyErr, err error) {
	cfg := c.cfg.Netmaker
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.plan == nil {
		return d, nil, fmt.Errorf("no spec applied")
	}
	now := c.cfg.Now()
	d = netmaker.Desired{Hosts: map[string]netmaker.Attested{}, Removed: map[string]time.Time{}, Grace: cfg.Grace}
	var clusters []netmaker.Cluster
	network := map[string]string{} // region → network
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
		network[r.Name] = ns.Name
		for _, cl := range r.Clusters {
			clusters = append(clusters, netmaker.Cluster{Region: r.Name, Name: cl.Name, Network: ns.Name})
		}
	}
	acls, tags, err := netmaker.MapPolicy(c.mesh.Policy, clusters)
	if err != nil {
		d.SkipPolicy = true
		policyErr = fmt.Errorf("the policy cannot be written in Netmaker; its tags and ACL policies there are left as they are: %w", err)
	}
	d.ACLs = acls
	for _, cl := range clusters {
		d.Keys = append(d.Keys, netmaker.KeySpec{Region: cl.Region, Cluster: cl.Name, Network: cl.Network,
			Tags: tags[cl.Region+"/"+cl.Name], TTL: cfg.KeyTTL})
	}
	current := map[string]bool{}
	candidates := map[string][]*NodeRecord{} // network → gateway candidates
	for _, n := range c.nodes {
		k := n.PublicKey.String()
		current[k] = true
		if n.State == topology.StateActive {
			// Weak ones are known too: their pending requests are
			// rejected at once instead of after the grace period.
			d.Hosts[k] = netmaker.Attested{Node: n.Name, Region: n.Region, Cluster: n.Cluster, Class: n.Class}
		}
		switch {
		case n.State == topology.StateActive && n.Class == netmap.ClassStrong:
			st.seen[k] = n.Name
			delete(st.gone, k)
			if net, ok := network[n.Region]; ok && n.Role == netmap.RoleHost && n.Labels[NetmakerGatewayLabel] == "true" {
				candidates[net] = append(candidates[net], n)
			}
		case st.seen[k] != "":
			// Admitted once, no longer qualifies: quarantined, or
			// downgraded to weak by a failed re-attestation.
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
	for _, ns := range d.Networks {
		cs := candidates[ns.Name]
		if len(cs) == 0 {
			continue
		}
		slices.SortFunc(cs, func(a, b *NodeRecord) int { return strings.Compare(a.Name, b.Name) })
		g := netmaker.GatewaySpec{Network: ns.Name}
		for _, n := range cs {
			g.Candidates = append(g.Candidates, n.PublicKey.String())
		}
		d.Gateways = append(d.Gateways, g)
	}
	return d, policyErr, nil
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
	for _, rm := range rep.Removals {
		if rm.Unattested {
			s.RemovedUnattested++
			c.metrics.netmakerUnattested.WithLabelValues("removed").Inc()
			c.log.Warn("netmaker host removed: no attested node owns it and it joined without approval", "host", rm.Host, "network", rm.Network)
		}
	}
	for _, u := range rep.Unattested {
		if !slices.Contains(s.Unattested, u) { // once, not every pass
			c.log.Warn("netmaker host left in place though no attested node owns it (admitted in Netmaker by someone else)", "host", u)
		}
	}
	if err == nil || rep.Calls > 0 {
		s.Unattested, s.Ungated = slices.Clone(rep.Unattested), rep.Ungated
	}
	c.mu.Lock()
	c.backends = []api.BackendStatus{*s}
	c.mu.Unlock()
}

// backendsLocked returns the backends' status for Status.
func (c *Controller) backendsLocked() []api.BackendStatus {
	return slices.Clone(c.backends)
}
