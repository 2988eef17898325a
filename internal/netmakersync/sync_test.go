package netmakersync

import (
	"context"
	"iter"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/store/bolt"
	"github.com/statemesh/statemesh/internal/topology"
)

// fakeRegistry is the controller as the sync sees it.
type fakeRegistry struct {
	mu       sync.Mutex
	plan     *plan.Plan
	mesh     *spec.Mesh
	nodes    []controller.BackendNode
	backends []api.BackendStatus
	kick     chan struct{}
}

func (f *fakeRegistry) ReadRegistry(fn func(controller.RegistryView)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	nodes := slices.Clone(f.nodes)
	fn(controller.RegistryView{Plan: f.plan, Mesh: f.mesh,
		Nodes:      iter.Seq[controller.BackendNode](slices.Values(nodes)),
		LastChange: func(string, time.Time) time.Time { return time.Unix(1000, 0) }})
}
func (f *fakeRegistry) BackendChanges() <-chan struct{} { return f.kick }
func (f *fakeRegistry) SetBackends(bs []api.BackendStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backends = bs
}

func (f *fakeRegistry) set(ns ...controller.BackendNode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes = ns
}

// small is examples/small.yaml, planned.
func small(t *testing.T) ([]byte, *spec.Mesh, *plan.Plan) {
	src, err := os.ReadFile("../../examples/small.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := spec.Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Compute(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return src, m, p
}

// newSync is a sync over a fake registry and a real store.
func newSync(t *testing.T, cfg Config) (*Sync, *fakeRegistry) {
	_, m, p := small(t)
	cl, err := netmaker.NewClient("http://127.0.0.1:1", "t", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if cfg.Client == nil {
		cfg.Client = cl
	}
	cfg.Store = st
	if cfg.Networks == nil {
		cfg.Networks = map[string]netmaker.NetworkSpec{"eu-central": {Name: "nm-eu", AddressRange: "10.201.0.0/16"}}
	}
	reg := &fakeRegistry{plan: p, mesh: m, kick: make(chan struct{}, 1)}
	return New(reg, cfg), reg
}

func newState() *netmakerState {
	return &netmakerState{seen: map[string]string{}, gone: map[string]time.Time{}}
}

// TestNetmakerDesiredFollowsTheRegistry checks what the controller asks of
// Netmaker: every active node's key with its region, cluster and class;
// keys of nodes that were admitted and no longer qualify (quarantined,
// downgraded, removed) as removed; labelled strong hosts as the gateway
// candidates of their region's network, by name; and a policy Netmaker
// cannot express reported while admission goes on.
func TestNetmakerDesiredFollowsTheRegistry(t *testing.T) {
	// The sync's own passes would go nowhere (nothing listens there); the
	// test calls desired itself.
	s, reg := newSync(t, Config{KeyTTL: 720 * time.Hour})
	spec0, _, _ := small(t)
	key := func() netmap.Key { k, _ := netmap.GeneratePrivateKey(); return k.PublicKey() }
	gw := map[string]string{GatewayLabel: "true"}
	recs := []*controller.BackendNode{
		{Name: "host-b", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key(), Labels: gw},
		{Name: "host-a", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key(), Labels: gw},
		{Name: "host-c", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key()},
		{Name: "host-w", Region: "eu-central", Cluster: "staging", Role: netmap.RoleHost, Class: netmap.ClassWeak, State: topology.StateActive, PublicKey: key(), Labels: gw},
		{Name: "us-1", Region: "us-east", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key(), Labels: gw},
	}
	set := func(rs ...*controller.BackendNode) {
		var ns []controller.BackendNode
		for _, r := range rs {
			ns = append(ns, *r)
		}
		reg.set(ns...)
	}
	set(recs...)
	nst := newState()
	d, policyErr, err := s.desired(nst)
	if err != nil || policyErr != nil {
		t.Fatal(err, policyErr)
	}
	if len(d.Hosts) != 5 || d.Hosts[recs[3].PublicKey.String()].Class != netmap.ClassWeak || d.Hosts[recs[0].PublicKey.String()].Cluster != "prod" {
		t.Errorf("hosts: %+v", d.Hosts)
	}
	if len(d.Removed) != 0 {
		t.Errorf("removed before anything happened: %v", d.Removed)
	}
	if len(d.Networks) != 1 || d.Networks[0].MTU == 0 || len(d.Keys) != 2 || d.Keys[0].TTL != 720*time.Hour {
		t.Errorf("networks %+v keys %+v (one per cluster of the mapped region, the plan's MTU, the key TTL)", d.Networks, d.Keys)
	}
	// Candidates: strong labelled hosts of the region, by name (the weak
	// one and the other region's are not).
	if len(d.Gateways) != 1 || !slices.Equal(d.Gateways[0].Candidates, []string{recs[1].PublicKey.String(), recs[0].PublicKey.String()}) {
		t.Errorf("gateways: %+v", d.Gateways)
	}

	// host-a quarantined, host-c downgraded, host-b removed from the
	// registry: all three leave Netmaker; host-a's candidacy passes on.
	a, cc := *recs[1], *recs[2]
	a.State, cc.Class = topology.StateQuarantined, netmap.ClassWeak
	set(recs[0], &a, &cc, recs[3], recs[4])
	d, _, _ = s.desired(nst)
	if _, ok := d.Removed[a.PublicKey.String()]; !ok {
		t.Error("quarantined host-a not removed from Netmaker")
	}
	if _, ok := d.Removed[cc.PublicKey.String()]; !ok {
		t.Error("downgraded host-c not removed from Netmaker")
	}
	if len(d.Gateways) != 1 || !slices.Equal(d.Gateways[0].Candidates, []string{recs[0].PublicKey.String()}) {
		t.Errorf("after host-a's quarantine: gateways %+v", d.Gateways)
	}
	set(&a, &cc, recs[3], recs[4])
	d, _, _ = s.desired(nst)
	if _, ok := d.Removed[recs[0].PublicKey.String()]; !ok || len(d.Gateways) != 0 {
		t.Errorf("removed host-b: removed %v, gateways %+v", d.Removed, d.Gateways)
	}

	// A policy Netmaker cannot express: reported, tags and ACLs left
	// alone, admission and removal go on.
	withPolicy, err := spec.Parse(append(spec0, "policy:\n  segments:\n    - name: vault\n      match: {labels: {app: vault}}\n"...))
	if err != nil {
		t.Fatal(err)
	}
	reg.mu.Lock()
	pol := *reg.mesh
	pol.Policy = withPolicy.Policy
	reg.mesh = &pol
	reg.mu.Unlock()
	d, policyErr, err = s.desired(nst)
	if err != nil || policyErr == nil || !strings.Contains(policyErr.Error(), "vault") || !d.SkipPolicy || len(d.Removed) != 3 {
		t.Errorf("refused policy: err %v, policy %v, skip %v, removed %d", err, policyErr, d.SkipPolicy, len(d.Removed))
	}
}

// TestNetmakerRemovalSurvivesRestart: which hosts StateMesh admitted and
// dropped is kept in the store, so a controller restarted after a node's
// quarantine (or before its removal from the registry) still has its
// Netmaker host removed. Issue 17, item 5: it was kept in memory only.
func TestNetmakerRemovalSurvivesRestart(t *testing.T) {
	s, reg := newSync(t, Config{})
	ctx := context.Background()
	key := func() netmap.Key { k, _ := netmap.GeneratePrivateKey(); return k.PublicKey() }
	a := &controller.BackendNode{Name: "host-a", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key()}
	b := &controller.BackendNode{Name: "host-b", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key()}
	set := func(rs ...*controller.BackendNode) {
		var ns []controller.BackendNode
		for _, r := range rs {
			ns = append(ns, *r)
		}
		reg.set(ns...)
	}
	set(a, b)
	st, err := s.loadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.desired(st); err != nil {
		t.Fatal(err)
	}
	if err := s.saveState(ctx, st); err != nil {
		t.Fatal(err)
	}
	// The controller restarts; meanwhile host-a was quarantined and
	// host-b removed from the registry.
	qa := *a
	qa.State = topology.StateQuarantined
	set(&qa)
	st2, err := s.loadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := s.desired(st2)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*controller.BackendNode{a, b} {
		if _, ok := d.Removed[n.PublicKey.String()]; !ok {
			t.Errorf("after a restart, %s's host is not removed from Netmaker (removed: %v)", n.Name, d.Removed)
		}
	}
	if err := s.saveState(ctx, st2); err != nil {
		t.Fatal(err)
	}
	// And the drop time is kept: a second restart reports the same.
	st3, _ := s.loadState(ctx)
	d3, _, _ := s.desired(st3)
	for k, at := range d.Removed {
		if !d3.Removed[k].Equal(at) {
			t.Errorf("drop time of %s: %v, then %v after another restart", k, at, d3.Removed[k])
		}
	}
}

// TestNetmakerUnattestedHostsAreReported: hosts removed because no
// attested node owns them, and unattested members left in place, reach
// the status (statemesh status, doctor) and the metric (issue 17, item 6:
// they were reported nowhere).
func TestNetmakerUnattestedHostsAreReported(t *testing.T) {
	s, reg := newSync(t, Config{})
	st := newState()
	rep := netmaker.Report{Ungated: true, Calls: 9, Unattested: []string{"laptop in nm-eu"},
		Removals: []netmaker.Removal{{Host: "intruder", Network: "nm-eu", Unattested: true}}}
	s.record(st, rep, nil)
	s.record(st, rep, nil)
	reg.mu.Lock()
	b := reg.backends
	reg.mu.Unlock()
	if len(b) != 1 || b[0].RemovedUnattested != 2 || !b[0].Ungated || !slices.Equal(b[0].Unattested, []string{"laptop in nm-eu"}) {
		t.Errorf("backend status: %+v", b)
	}
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(s.Collector())
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(promReg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if want := `statemesh_netmaker_unattested_hosts_total{outcome="removed"} 2`; !strings.Contains(rec.Body.String(), want) {
		t.Errorf("metrics lack %s", want)
	}
}
