package controller

import (
	"iter"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
)

// External backends (Netmaker: package netmakersync) run beside the
// controller, not inside it: they read the registry through ReadRegistry,
// learn of changes from BackendChanges, and publish their health with
// SetBackends, which Status shows. The controller knows nothing of them.

// BackendNode is a node as an external backend sees it.
type BackendNode struct {
	Name, Region, Cluster, Role, Class, State string
	PublicKey                                 netmap.Key
	Labels                                    map[string]string
}

// RegistryView is the registry at one moment, as ReadRegistry gives it.
type RegistryView struct {
	Plan *plan.Plan
	Mesh *spec.Mesh
	// Nodes yields every enrolled node.
	Nodes iter.Seq[BackendNode]
	// LastChange is when the latest event about a node happened (its
	// quarantine or removal), or fallback when no event is remembered.
	LastChange func(node string, fallback time.Time) time.Time
}

// ReadRegistry calls fn with the registry under its read lock: fn reads
// the view and must not call the controller. Without a spec, Plan is nil.
func (c *Controller) ReadRegistry(fn func(RegistryView)) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	fn(RegistryView{Plan: c.plan, Mesh: c.mesh,
		Nodes: func(yield func(BackendNode) bool) {
			for _, n := range c.nodes {
				if !yield(BackendNode{Name: n.Name, Region: n.Region, Cluster: n.Cluster, Role: n.Role, Class: n.Class,
					State: n.State, PublicKey: n.PublicKey, Labels: n.Labels}) {
					return
				}
			}
		},
		LastChange: c.lastEventLocked,
	})
}

// BackendChanges receives a value (coalesced) whenever a node's state
// changes or a node is removed: backends then act at once rather than at
// their next pass.
func (c *Controller) BackendChanges() <-chan struct{} { return c.backendKick }

// kickBackends signals BackendChanges.
func (c *Controller) kickBackends() {
	select {
	case c.backendKick <- struct{}{}:
	default:
	}
}

// SetBackends publishes the backends' status (statemesh status, doctor,
// the dashboard).
func (c *Controller) SetBackends(bs []api.BackendStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.backends = slices.Clone(bs)
}

// backendsLocked returns the backends' status for Status.
func (c *Controller) backendsLocked() []api.BackendStatus {
	return slices.Clone(c.backends)
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

// RegisterMetrics adds collectors (a backend's) to the controller's
// metrics endpoint.
func (c *Controller) RegisterMetrics(cs ...prometheus.Collector) error {
	for _, col := range cs {
		if err := c.metrics.reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}
