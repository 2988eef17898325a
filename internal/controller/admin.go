package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/topology"
)

// ApplySpec validates and plans a spec and, when both succeed, stores the
// spec and the plan in one transaction. The plan in force is the planner's
// state, so existing allocations never move. A rejected spec leaves the one
// in force untouched.
func (c *Controller) ApplySpec(ctx context.Context, yaml []byte) (api.ApplyResult, error) {
	m, err := spec.Parse(yaml)
	if err != nil {
		var es spec.Errors
		if errors.As(err, &es) {
			ae := apiErr(api.CodeSpecInvalid, "the spec has %d error(s); nothing was changed", len(es))
			for _, e := range es {
				ae.Fields = append(ae.Fields, api.FieldError{Path: e.Path, Line: e.Line, Message: e.Msg, Fix: e.Fix})
			}
			return api.ApplyResult{}, ae
		}
		return api.ApplyResult{}, apiErr(api.CodeSpecInvalid, "%v", err)
	}
	clusters := 0
	for _, r := range m.Regions {
		clusters += len(r.Clusters)
	}
	res := api.ApplyResult{Mesh: m.Metadata.Name, Regions: len(m.Regions), Clusters: clusters}
	rev, err := c.st.Update(ctx, func(tx store.Tx) error {
		res.Unchanged = false
		var prev *plan.Plan
		if kv, err := tx.Get(keySpec); err == nil {
			if r, err := decode[SpecRecord](kv.Value); err == nil && r.YAML == string(yaml) {
				res.Unchanged = true
				return nil
			}
		}
		if kv, err := tx.Get(keyPlan); err == nil {
			if prev, err = plan.Decode(kv.Value); err != nil {
				return fmt.Errorf("plan in store: %w", err)
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if prev != nil && prev.Mesh != m.Metadata.Name {
			return apiErr(api.CodeConflict, "this controller runs mesh %q; the spec is for mesh %q", prev.Mesh, m.Metadata.Name)
		}
		p, err := plan.Compute(m, prev)
		if err != nil {
			var inf *plan.InfeasibleError
			if errors.As(err, &inf) {
				return apiErr(api.CodePlanInfeasible, "%v", err)
			}
			return err
		}
		if err := c.checkRemovals(tx, p); err != nil {
			return err
		}
		pj, err := json.Marshal(p)
		if err != nil {
			return err
		}
		if err := tx.Put(keySpec, encode(SpecRecord{YAML: string(yaml), AppliedAt: c.cfg.Now()})); err != nil {
			return err
		}
		return tx.Put(keyPlan, pj)
	})
	if err != nil {
		return api.ApplyResult{}, err
	}
	res.Revision = rev
	// Read your writes: later calls on this replica see the new plan.
	if err := c.WaitRevision(ctx, rev); err != nil {
		return res, err
	}
	if !res.Unchanged {
		c.log.Info("spec applied", "mesh", res.Mesh, "regions", res.Regions, "clusters", res.Clusters, "revision", rev)
	}
	return res, nil
}

// checkRemovals refuses a plan that drops a cluster or region that still
// has nodes, or shrinks a cluster below its nodes' slots.
func (c *Controller) checkRemovals(tx store.Tx, p *plan.Plan) error {
	kvs, err := tx.List(prefixNodes)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		n, err := decode[NodeRecord](kv.Value)
		if err != nil {
			continue
		}
		limit, err := slotLimit(p, n.Region, n.Cluster)
		if err != nil {
			return apiErr(api.CodeConflict, "the spec removes %s, which still has node %s; remove its nodes first", where(n), n.Name)
		}
		if n.Slot >= limit {
			return apiErr(api.CodeConflict, "the spec shrinks %s below node %s's address slot %d; remove the node first", where(n), n.Name, n.Slot)
		}
	}
	return nil
}

func where(n NodeRecord) string {
	if n.Cluster == "" {
		return "region " + n.Region
	}
	return "cluster " + n.Region + "/" + n.Cluster
}

// Spec returns the spec in force.
func (c *Controller) Spec() (string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.specYAML == "" {
		return "", apiErr(api.CodeNoSpec, "no spec has been applied")
	}
	return c.specYAML, nil
}

// Plan returns the plan in force.
func (c *Controller) Plan() (*plan.Plan, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.plan == nil {
		return nil, apiErr(api.CodeNoSpec, "no spec has been applied")
	}
	return c.plan, nil
}

func nodeView(n *NodeRecord, h HealthRecord) api.Node {
	v := api.Node{
		Name: n.Name, Region: n.Region, Cluster: n.Cluster, Role: n.Role, Class: n.Class, State: n.State,
		PublicKey: n.PublicKey, OverlayIPv4: n.OverlayIPv4.String(), EnrolledAt: n.EnrolledAt,
	}
	if n.OverlayIPv6.IsValid() {
		v.OverlayIPv6 = n.OverlayIPv6.String()
	}
	if n.PodIPv4.IsValid() {
		v.PodIPv4 = n.PodIPv4.String()
	}
	if n.PodIPv6.IsValid() {
		v.PodIPv6 = n.PodIPv6.String()
	}
	if n.Endpoint.IsValid() {
		v.Endpoint = n.Endpoint.String()
	}
	if n.PublicEndpoint.IsValid() {
		v.PublicEndpoint = n.PublicEndpoint.String()
	}
	if n.Role == netmap.RoleGateway {
		healthy := h.Healthy
		v.Healthy = &healthy
	}
	if !n.AttestedAt.IsZero() {
		at := n.AttestedAt
		v.AttestedAt = &at
	}
	v.Reason = n.Reason
	v.Labels = n.Labels
	v.EKHash = n.EKHash
	return v
}

// withStatus adds what the node last reported to this replica. Callers
// hold c.mu.
func (c *Controller) withStatus(v api.Node) api.Node {
	if st, ok := c.status[v.Name]; ok {
		v.Firewall = st.report.Firewall
		v.Dataplane = st.report.Dataplane
		v.AppliedRevision = st.report.AppliedRevision
		v.Peers = st.report.Peers
		v.StalePeers = st.report.StalePeers
		v.Routing = st.report.Routing
		at := st.at
		v.ReportedAt = &at
		if !st.report.Time.IsZero() {
			v.ClockSkewMillis = float64(st.report.Time.Sub(st.at).Microseconds()) / 1000
		}
	}
	return v
}

// Paths lists the paths nodes measured (their latest reports to this
// controller), sorted by reporter and peer.
func (c *Controller) Paths() []api.Path {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.pathsLocked()
}

func (c *Controller) pathsLocked() []api.Path {
	out := []api.Path{}
	for name, st := range c.status {
		n, ok := c.nodes[name]
		if !ok {
			continue
		}
		for _, p := range st.report.Paths {
			out = append(out, api.Path{From: name, FromRegion: n.Region, FromRole: n.Role, PathProbe: p})
		}
	}
	slices.SortFunc(out, func(a, b api.Path) int {
		if c := cmpStr(a.From, b.From); c != 0 {
			return c
		}
		return cmpStr(a.Peer, b.Peer)
	})
	return out
}

// Nodes lists nodes, optionally of one region and/or cluster.
func (c *Controller) Nodes(region, cluster string) []api.Node {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := []api.Node{}
	for _, n := range c.nodes {
		if (region == "" || n.Region == region) && (cluster == "" || n.Cluster == cluster) {
			out = append(out, c.withStatus(nodeView(n, c.health[n.Name])))
		}
	}
	slices.SortFunc(out, func(a, b api.Node) int { return cmpStr(a.Name, b.Name) })
	return out
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Node returns one node.
func (c *Controller) Node(name string) (api.Node, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n, ok := c.nodes[name]
	if !ok {
		return api.Node{}, apiErr(api.CodeNotFound, "no node %q", name)
	}
	return c.withStatus(nodeView(n, c.health[name])), nil
}

// Regions lists the regions with their gateways and designation.
func (c *Controller) Regions() ([]api.Region, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.plan == nil {
		return nil, apiErr(api.CodeNoSpec, "no spec has been applied")
	}
	counts := map[string]int{}
	for _, n := range c.nodes {
		counts[n.Region]++
	}
	out := []api.Region{}
	for _, r := range c.plan.Regions {
		ar := api.Region{Name: r.Name, OverlayIPv4: r.OverlayIPv4.String(), Clusters: len(r.Clusters), Nodes: counts[r.Name], Designation: c.ix.Designation(r.Name)}
		load := map[string][]string{}
		for cl, g := range ar.Designation {
			load[g] = append(load[g], cl)
		}
		for _, g := range c.ix.Gateways(r.Name) {
			n := c.nodes[g]
			cls := load[g]
			slices.Sort(cls)
			ar.Gateways = append(ar.Gateways, api.Gateway{Name: g, Healthy: c.health[g].Healthy, State: n.State, Clusters: cls,
				Routing: c.status[g].report.Routing, Peers: c.status[g].report.Peers, RxBytes: c.status[g].report.RxBytes, TxBytes: c.status[g].report.TxBytes})
		}
		out = append(out, ar)
	}
	return out, nil
}

// Clusters lists the clusters with node counts and designated gateways.
func (c *Controller) Clusters() ([]api.Cluster, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.plan == nil {
		return nil, apiErr(api.CodeNoSpec, "no spec has been applied")
	}
	counts := map[string]int{}
	for _, n := range c.nodes {
		if n.Cluster != "" {
			counts[n.Region+"/"+n.Cluster]++
		}
	}
	out := []api.Cluster{}
	for _, r := range c.plan.Regions {
		des := c.ix.Designation(r.Name)
		for _, cl := range r.Clusters {
			ac := api.Cluster{Region: r.Name, Name: cl.Name, ClusterID: cl.ClusterID, OverlayIPv4: cl.OverlayIPv4.String(),
				MaxNodes: cl.MaxNodes, Nodes: counts[r.Name+"/"+cl.Name], DesignatedGateway: des[cl.Name]}
			if cl.PodIPv4.IsValid() {
				ac.PodIPv4 = cl.PodIPv4.String()
			}
			if cl.PodIPv6.IsValid() {
				ac.PodIPv6 = cl.PodIPv6.String()
			}
			out = append(out, ac)
		}
	}
	return out, nil
}

// RemoveNode deletes a node; its address slot is released (kept for the
// grace period) in the same transaction.
func (c *Controller) RemoveNode(ctx context.Context, name string) error {
	now := c.cfg.Now()
	rev, err := c.st.Update(ctx, func(tx store.Tx) error {
		kv, err := tx.Get(nodeKey(name))
		if errors.Is(err, store.ErrNotFound) {
			return apiErr(api.CodeNotFound, "no node %q", name)
		}
		if err != nil {
			return err
		}
		n, err := decode[NodeRecord](kv.Value)
		if err != nil {
			return err
		}
		if err := tx.Delete(nodeKey(name)); err != nil {
			return err
		}
		if err := tx.Delete(healthKey(name)); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if n.EKHash != "" {
			if err := tx.Delete(ekKey(n.EKHash)); err != nil {
				return err
			}
		}
		if err := releaseWGKey(tx, n.PublicKey, nodeOwner(name)); err != nil {
			return err
		}
		return tx.Put(slotKey(n.Region, n.Cluster, n.Slot), encode(SlotRecord{Node: name, ReleasedAt: now}))
	})
	if err != nil {
		return err
	}
	c.log.Info("node removed", "node", name)
	return c.WaitRevision(ctx, rev)
}

// SetState quarantines a node (state quarantined) or releases it (active).
func (c *Controller) SetState(ctx context.Context, name, state, reason string) (api.Node, error) {
	var rec NodeRecord
	rev, err := c.st.Update(ctx, func(tx store.Tx) error {
		kv, err := tx.Get(nodeKey(name))
		if errors.Is(err, store.ErrNotFound) {
			return apiErr(api.CodeNotFound, "no node %q", name)
		}
		if err != nil {
			return err
		}
		if rec, err = decode[NodeRecord](kv.Value); err != nil {
			return err
		}
		if rec.State == state {
			return nil
		}
		rec.State = state
		if state == topology.StateActive {
			rec.Reason = ""
		} else {
			rec.Reason = reason
		}
		return tx.Put(nodeKey(name), encode(rec))
	})
	if err != nil {
		return api.Node{}, err
	}
	c.log.Info("node state", "node", name, "state", state, "reason", reason)
	return nodeView(&rec, HealthRecord{}), c.WaitRevision(ctx, rev)
}

// Quarantine and Release are SetState shorthands.
func (c *Controller) Quarantine(ctx context.Context, name, reason string) (api.Node, error) {
	return c.SetState(ctx, name, topology.StateQuarantined, reason)
}

// Release lifts a quarantine.
func (c *Controller) Release(ctx context.Context, name string) (api.Node, error) {
	return c.SetState(ctx, name, topology.StateActive, "released by admin")
}
