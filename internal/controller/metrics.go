package controller

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/store"
)

// metrics are the controller's Prometheus series (docs/metrics.md). Label
// values are bounded: regions, clusters, classes, states, gateways, error
// codes — never nodes.
type metrics struct {
	reg          *prometheus.Registry
	enrollments  *prometheus.CounterVec
	attestations *prometheus.CounterVec
	fanout       prometheus.Histogram
	storeOps     *prometheus.HistogramVec
	overflows    prometheus.CounterFunc
	resumes      *prometheus.CounterVec
	unmarked     prometheus.CounterFunc
}

func newMetrics(c *Controller) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.enrollments = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "statemesh_enrollments_total",
		Help: "Enrollment requests by result: ok, or the API error code that refused them.",
	}, []string{"result"})
	m.attestations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "statemesh_attestations_total",
		Help: "Attestation verdicts by kind (enrollment, reattestation) and verdict (accepted, or the refusal).",
	}, []string{"kind", "verdict"})
	m.fanout = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "statemesh_fanout_delay_seconds",
		Help:    "Time from a change being applied to the registry until its delta is written to a watch stream.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	m.storeOps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "statemesh_store_operation_seconds",
		Help:    "Store operations (get, list, update) by result.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
	}, []string{"op", "result"})
	m.overflows = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "statemesh_watch_overflows_total",
		Help: "Watch streams that fell behind and were resynchronized with a snapshot.",
	}, func() float64 { return float64(c.hub.dropped.Load()) })
	m.resumes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "statemesh_watch_resumes_total",
		Help: "Watch streams that resumed from a revision, by how they were answered: current (nothing missed), deltas (the missed deltas), snapshot.",
	}, []string{"result"})
	for _, r := range []string{resumeCurrent, resumeDeltas, resumeSnapshot} {
		m.resumes.WithLabelValues(r)
	}
	m.unmarked = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "statemesh_map_changes_unmarked_total",
		Help: "Store revisions that changed maps without the map-revision marker of every scope they changed (a writer that bypassed the controller); each makes every older revision resume with a snapshot.",
	}, func() float64 { return float64(c.unmarked.Load()) })
	m.reg.MustRegister(m.enrollments, m.attestations, m.fanout, m.storeOps, m.overflows, m.resumes, m.unmarked,
		&registryCollector{c: c},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// MetricsHandler serves the controller's metrics in the Prometheus format.
func (c *Controller) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(c.metrics.reg, promhttp.HandlerOpts{})
}

func errCode(err error) string {
	if err == nil {
		return "ok"
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	if storeUnavailable(err) {
		return api.CodeUnavailable
	}
	return api.CodeInternal
}

// storeUnavailable reports whether err is the store failing to answer
// (unreachable, overloaded, or the caller's deadline passing while it was
// slow) or giving up on conflicting writers: the API answers `unavailable`
// (retry) to those, not `internal` (internal/server).
func storeUnavailable(err error) bool {
	return errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, store.ErrConflict)
}

// registryCollector reports the registry's state at scrape time.
type registryCollector struct{ c *Controller }

var (
	descNodes = prometheus.NewDesc("statemesh_nodes", "Enrolled nodes by region, cluster (\"\" for gateways), role, class and state.",
		[]string{"region", "cluster", "role", "class", "state"}, nil)
	descGatewayHealthy = prometheus.NewDesc("statemesh_gateway_healthy", "1 when the gateway's heartbeats are current.",
		[]string{"region", "gateway"}, nil)
	descDesignated = prometheus.NewDesc("statemesh_gateway_designated_clusters", "Clusters a gateway is the designated gateway of.",
		[]string{"region", "gateway"}, nil)
	descStreams   = prometheus.NewDesc("statemesh_watch_streams", "Open watch streams (agents following their map).", nil, nil)
	descLastWrite = prometheus.NewDesc("statemesh_watch_last_write_timestamp_seconds", "When a watch stream last finished writing queued frames (deltas, snapshots; not pings) to its connection, in Unix seconds.", nil, nil)
	descRevision  = prometheus.NewDesc("statemesh_registry_revision", "Store revision the registry reflects.", nil, nil)
	descLag       = prometheus.NewDesc("statemesh_nodes_behind", "Nodes whose last status report names a map older than the last change sent to them (a rollout in progress, or a node that stopped applying).",
		nil, nil)
	descClients = prometheus.NewDesc("statemesh_clients", "External clients by region and segment.", []string{"region", "segment"}, nil)
)

func (r *registryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodes, descGatewayHealthy, descDesignated, descStreams, descLastWrite, descRevision, descLag, descClients} {
		ch <- d
	}
}

func (r *registryCollector) Collect(ch chan<- prometheus.Metric) {
	c := r.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	type key struct{ region, cluster, role, class, state string }
	counts := map[key]int{}
	for _, n := range c.nodes {
		counts[key{n.Region, n.Cluster, n.Role, n.Class, n.State}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(n), k.region, k.cluster, k.role, k.class, k.state)
	}
	if c.ix != nil && c.plan != nil {
		for _, pr := range c.plan.Regions {
			load := map[string]int{}
			for _, g := range c.ix.Designation(pr.Name) {
				load[g]++
			}
			for _, g := range c.ix.Gateways(pr.Name) {
				h := 0.0
				if c.health[g].Healthy {
					h = 1
				}
				ch <- prometheus.MustNewConstMetric(descGatewayHealthy, prometheus.GaugeValue, h, pr.Name, g)
				ch <- prometheus.MustNewConstMetric(descDesignated, prometheus.GaugeValue, float64(load[g]), pr.Name, g)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(c.hub.len()))
	ch <- prometheus.MustNewConstMetric(descLastWrite, prometheus.GaugeValue, float64(c.lastWrite.Load())/1e9)
	ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, float64(c.rev))
	behind := 0
	for name, st := range c.status {
		if sub, ok := c.hub.subs[name]; ok && st.report.AppliedRevision < sub.lastRev.Load() {
			behind++
		}
	}
	ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(behind))
	type ck struct{ region, segment string }
	clients := map[ck]int{}
	for _, cl := range c.clients {
		clients[ck{cl.Region, cl.Segment}]++
	}
	for k, n := range clients {
		ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(n), k.region, k.segment)
	}
}

// timedStore measures a store's operations.
type timedStore struct {
	Store
	h *prometheus.HistogramVec
}

func (s timedStore) observe(op string, start time.Time, err error) {
	r := "ok"
	if err != nil {
		r = "error"
	}
	s.h.WithLabelValues(op, r).Observe(time.Since(start).Seconds())
}

func (s timedStore) Get(ctx context.Context, key string) (store.KV, error) {
	start := time.Now()
	kv, err := s.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		s.observe("get", start, nil)
	} else {
		s.observe("get", start, err)
	}
	return kv, err
}

func (s timedStore) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	start := time.Now()
	kvs, rev, err := s.Store.List(ctx, prefix)
	s.observe("list", start, err)
	return kvs, rev, err
}

func (s timedStore) Update(ctx context.Context, fn func(tx store.Tx) error) (int64, error) {
	start := time.Now()
	rev, err := s.Store.Update(ctx, fn)
	var ae *api.Error
	if errors.As(err, &ae) {
		s.observe("update", start, nil) // refused by the caller's checks, not a store failure
	} else {
		s.observe("update", start, err)
	}
	return rev, err
}
