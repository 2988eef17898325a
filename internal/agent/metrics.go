package agent

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// agentMetrics are the agent's Prometheus series (docs/metrics.md). No
// per-peer labels: a node may have 5,000 peers.
type agentMetrics struct {
	reg          *prometheus.Registry
	applySeconds *prometheus.HistogramVec
	applyErrors  prometheus.Counter
	driftRepairs prometheus.Counter
	watchResets  prometheus.Counter
	// controllerAttest counts attestations of the controller (mutual
	// aTLS) by result: ok, untrusted, unreachable.
	controllerAttest *prometheus.CounterVec
}

func newAgentMetrics(a *Agent) *agentMetrics {
	m := &agentMetrics{reg: prometheus.NewRegistry()}
	m.applySeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "statemesh_agent_apply_seconds",
		Help:    "Time to apply a map to the WireGuard device, by kind (delta, full).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
	}, []string{"kind"})
	m.applyErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "statemesh_agent_apply_errors_total", Help: "Map applications that failed (retried by the reconcile loop)."})
	m.driftRepairs = prometheus.NewCounter(prometheus.CounterOpts{Name: "statemesh_agent_firewall_drift_repairs_total", Help: "Times StateMesh's nftables table was found changed and restored."})
	m.watchResets = prometheus.NewCounter(prometheus.CounterOpts{Name: "statemesh_agent_watch_reconnects_total", Help: "Times the map stream to the controller ended and was reopened."})
	m.controllerAttest = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "statemesh_agent_controller_attestations_total",
		Help: "Attestations of the controller's own TPM (mutual aTLS) by result: ok, untrusted (no map is taken from it), unreachable."}, []string{"result"})
	m.reg.MustRegister(m.applySeconds, m.applyErrors, m.driftRepairs, m.watchResets, m.controllerAttest, &deviceCollector{a: a},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// MetricsHandler serves the agent's metrics in the Prometheus format.
func (a *Agent) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{})
}

// deviceCollector reads the WireGuard device at scrape time.
type deviceCollector struct{ a *Agent }

var (
	descPeers     = prometheus.NewDesc("statemesh_agent_peers", "WireGuard peers in the applied map, by role of the peer.", []string{"role"}, nil)
	descHandshake = prometheus.NewDesc("statemesh_agent_handshake_age_seconds", "Age of each peer's latest handshake (peers without one are counted in +Inf).", nil, nil)
	descRx        = prometheus.NewDesc("statemesh_agent_receive_bytes_total", "Bytes received from all peers (WireGuard counters).", nil, nil)
	descTx        = prometheus.NewDesc("statemesh_agent_transmit_bytes_total", "Bytes sent to all peers (WireGuard counters).", nil, nil)
	descStale     = prometheus.NewDesc("statemesh_agent_stale_peers", "Peers with keepalive whose handshake is older than the stale threshold.", nil, nil)
	descRevision  = prometheus.NewDesc("statemesh_agent_applied_revision", "Revision of the applied map.", nil, nil)
	descFirewall  = prometheus.NewDesc("statemesh_agent_firewall_enforced", "1 when the node enforces the policy with its nftables table.", nil, nil)
	descMTU       = prometheus.NewDesc("statemesh_agent_interface_mtu", "MTU of the WireGuard interface (from the plan).", nil, nil)
	descUp        = prometheus.NewDesc("statemesh_agent_map_healthy", "1 when the last map application succeeded.", nil, nil)
	descPathRTT   = prometheus.NewDesc("statemesh_agent_path_rtt_seconds", "Median probe round trip to the region's gateways (the slowest probed gateway of the region).", []string{"region"}, nil)
	descPathLoss  = prometheus.NewDesc("statemesh_agent_path_loss_ratio", "Share of probes lost to the region's gateways (the worst probed gateway of the region).", []string{"region"}, nil)
	descPathMTU   = prometheus.NewDesc("statemesh_agent_path_mtu_bytes", "Smallest probed path MTU through the overlay to the region's gateways.", []string{"region"}, nil)
	descPathLow   = prometheus.NewDesc("statemesh_agent_path_mtu_below_plan", "Probed paths whose MTU is below the planned interface MTU.", nil, nil)
)

// handshakeBuckets: WireGuard rekeys every 2 minutes; a keepalive peer
// older than 3 minutes is stale.
var handshakeBuckets = []float64{5, 15, 30, 60, 120, 180, 300, 900}

func (c *deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeers, descHandshake, descRx, descTx, descStale, descRevision, descFirewall, descMTU, descUp, descPathRTT, descPathLoss, descPathMTU, descPathLow} {
		ch <- d
	}
}

func (c *deviceCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	a.mu.Lock()
	m, ok, dev, paths := a.prev, a.ok, a.dev, a.paths
	a.mu.Unlock()
	collectPaths(ch, paths)
	roles := map[string]int{}
	for _, p := range m.Peers {
		roles[p.Role]++
	}
	for r, n := range roles {
		ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(n), r)
	}
	ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, float64(m.Revision))
	ch <- prometheus.MustNewConstMetric(descMTU, prometheus.GaugeValue, float64(m.Interface.MTU))
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, b2f(ok))
	ch <- prometheus.MustNewConstMetric(descFirewall, prometheus.GaugeValue, b2f(a.firewallStatus() == "enforced"))
	if dev == nil {
		return
	}
	st, err := dev.Status()
	if err != nil {
		return
	}
	keepalive := map[netmap.Key]bool{}
	for _, p := range m.Peers {
		keepalive[p.PublicKey] = p.PersistentKeepalive > 0
	}
	now := time.Now()
	counts := make(map[float64]uint64, len(handshakeBuckets))
	for _, b := range handshakeBuckets {
		counts[b] = 0
	}
	var sum float64
	var n uint64
	var rx, tx int64
	stale := 0
	for _, s := range st {
		rx += s.RxBytes
		tx += s.TxBytes
		age := now.Sub(s.LastHandshake).Seconds()
		if s.LastHandshake.IsZero() {
			age = 1e9
		}
		if keepalive[s.PublicKey] && (s.LastHandshake.IsZero() || now.Sub(s.LastHandshake) > a.cfg.StaleAfter) {
			stale++
		}
		n++
		if !s.LastHandshake.IsZero() {
			sum += age
		}
		for _, b := range handshakeBuckets {
			if age <= b {
				counts[b]++
			}
		}
	}
	ch <- prometheus.MustNewConstHistogram(descHandshake, n, sum, counts)
	ch <- prometheus.MustNewConstMetric(descRx, prometheus.CounterValue, float64(rx))
	ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(tx))
	ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, float64(stale))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// collectPaths reduces the latest probe round to one series per region
// (bounded by the number of regions, not of peers): the worst RTT and loss
// and the smallest MTU among that region's probed gateways.
func collectPaths(ch chan<- prometheus.Metric, paths []api.PathProbe) {
	type agg struct {
		rtt, loss float64
		mtu       int
		answered  bool
	}
	by := map[string]*agg{}
	low := 0
	for _, p := range paths {
		g := by[p.Region]
		if g == nil {
			g = &agg{}
			by[p.Region] = g
		}
		g.loss = max(g.loss, p.Loss)
		if p.Loss < 1 {
			g.rtt = max(g.rtt, p.RTTMillis/1000)
			g.answered = true
			if p.PathMTU > 0 && (g.mtu == 0 || p.PathMTU < g.mtu) {
				g.mtu = p.PathMTU
			}
			if p.PathMTU > 0 && p.PathMTU < p.PlannedMTU {
				low++
			}
		}
	}
	for r, g := range by {
		ch <- prometheus.MustNewConstMetric(descPathLoss, prometheus.GaugeValue, g.loss, r)
		if g.answered {
			ch <- prometheus.MustNewConstMetric(descPathRTT, prometheus.GaugeValue, g.rtt, r)
		}
		if g.mtu > 0 {
			ch <- prometheus.MustNewConstMetric(descPathMTU, prometheus.GaugeValue, float64(g.mtu), r)
		}
	}
	ch <- prometheus.MustNewConstMetric(descPathLow, prometheus.GaugeValue, float64(low))
}
