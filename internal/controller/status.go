package controller

import (
	"fmt"
	"maps"
	"slices"

	"github.com/statemesh/statemesh/internal/api"
)

// maxEvents bounds the controller's in-memory event history.
const maxEvents = 500

// eventLocked records an event (callers hold c.mu). Every replica records
// what it follows from the store, so each has the same history from its
// start.
func (c *Controller) eventLocked(kind, subject, format string, args ...any) {
	if len(c.events) >= maxEvents {
		c.events = append(c.events[:0], c.events[maxEvents/4:]...)
	}
	c.events = append(c.events, api.Event{Time: c.cfg.Now(), Kind: kind, Subject: subject, Message: fmt.Sprintf(format, args...)})
}

// Events returns recent events, newest last, at most limit (0: all kept).
func (c *Controller) Events(limit int) []api.Event {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ev := c.events
	if limit > 0 && len(ev) > limit {
		ev = ev[len(ev)-limit:]
	}
	return append([]api.Event{}, ev...)
}

// designationsLocked snapshots every region's designated gateways.
func (c *Controller) designationsLocked() map[string]map[string]string {
	out := map[string]map[string]string{}
	if c.ix == nil || c.plan == nil {
		return out
	}
	for _, r := range c.plan.Regions {
		out[r.Name] = c.ix.Designation(r.Name)
	}
	return out
}

// failoverEventsLocked records clusters whose designated gateway changed.
func (c *Controller) failoverEventsLocked(before map[string]map[string]string) {
	after := c.designationsLocked()
	for _, region := range slices.Sorted(maps.Keys(after)) {
		for _, cl := range slices.Sorted(maps.Keys(after[region])) {
			old, now := before[region][cl], after[region][cl]
			if old != "" && old != now {
				c.eventLocked("failover", region+"/"+cl, "designated gateway %s → %s", old, now)
			}
		}
	}
}

// Status summarizes the mesh for a person (statemesh status).
func (c *Controller) Status() (api.Status, error) {
	regions, err := c.Regions()
	if err != nil {
		return api.Status{}, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	st := api.Status{Revision: c.rev, Nodes: map[string]int{}, Quarantined: []string{}, StalePeers: []string{}, Clients: len(c.clients)}
	if c.mesh != nil {
		st.Mesh = c.mesh.Metadata.Name
	}
	perCluster := map[string]map[string]int{}
	for _, n := range c.nodes {
		k := n.Class + "/" + n.State
		st.Nodes[k]++
		if n.Cluster != "" {
			ck := n.Region + "/" + n.Cluster
			if perCluster[ck] == nil {
				perCluster[ck] = map[string]int{}
			}
			perCluster[ck][k]++
		}
		if n.State != "active" && len(st.Quarantined) < 50 {
			st.Quarantined = append(st.Quarantined, n.Name)
		}
	}
	slices.Sort(st.Quarantined)
	for name, s := range c.status {
		st.NodesReporting++
		if len(s.report.StalePeers) > 0 && len(st.StalePeers) < 50 {
			st.StalePeers = append(st.StalePeers, name)
		}
		if sub, ok := c.hub.subs[name]; ok && s.report.AppliedRevision < sub.lastRev.Load() {
			st.NodesBehind++
		}
	}
	slices.Sort(st.StalePeers)
	st.Latency = LatencyMatrix(c.pathsLocked())
	st.Backends = c.backendsLocked()
	for _, r := range regions {
		rs := api.RegionStatus{Name: r.Name, Gateways: r.Gateways}
		for _, cl := range slices.Sorted(maps.Keys(r.Designation)) {
			counts := perCluster[r.Name+"/"+cl]
			if counts == nil {
				counts = map[string]int{}
			}
			rs.Clusters = append(rs.Clusters, api.ClusterStatus{Name: cl, DesignatedGateway: r.Designation[cl], Nodes: counts})
		}
		st.Regions = append(st.Regions, rs)
	}
	ev := c.events
	if len(ev) > 15 {
		ev = ev[len(ev)-15:]
	}
	st.Events = append([]api.Event{}, ev...)
	return st, nil
}
