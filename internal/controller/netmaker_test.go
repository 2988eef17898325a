package controller

import (
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/topology"
)

// TestNetmakerDesiredFollowsTheRegistry checks what the controller asks of
// Netmaker: every active node's key with its region, cluster and class;
// keys of nodes that were admitted and no longer qualify (quarantined,
// downgraded, removed) as removed; labelled strong hosts as the gateway
// candidates of their region's network, by name; and a policy Netmaker
// cannot express reported while admission goes on.
func TestNetmakerDesiredFollowsTheRegistry(t *testing.T) {
	// The loop's own passes go nowhere (nothing listens there); the test
	// calls netmakerDesired itself.
	cl, err := netmaker.NewClient("http://127.0.0.1:1", "t", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := runSmall(t, Config{Netmaker: &NetmakerConfig{Client: cl, Every: time.Hour,
		Networks: map[string]netmaker.NetworkSpec{"eu-central": {Name: "nm-eu", AddressRange: "10.201.0.0/16"}},
		KeyTTL:   720 * time.Hour}})
	spec0, _ := os.ReadFile("../../examples/small.yaml")
	key := func() netmap.Key { k, _ := netmap.GeneratePrivateKey(); return k.PublicKey() }
	gw := map[string]string{NetmakerGatewayLabel: "true"}
	recs := []*NodeRecord{
		{Name: "host-b", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key(), Labels: gw},
		{Name: "host-a", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key(), Labels: gw},
		{Name: "host-c", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key()},
		{Name: "host-w", Region: "eu-central", Cluster: "staging", Role: netmap.RoleHost, Class: netmap.ClassWeak, State: topology.StateActive, PublicKey: key(), Labels: gw},
		{Name: "us-1", Region: "us-east", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key(), Labels: gw},
	}
	set := func(rs ...*NodeRecord) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.nodes = map[string]*NodeRecord{}
		for _, r := range rs {
			c.nodes[r.Name] = r
		}
	}
	set(recs...)
	nst := &netmakerState{seen: map[string]string{}, gone: map[string]time.Time{}}
	d, policyErr, err := c.netmakerDesired(nst)
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
	d, _, _ = c.netmakerDesired(nst)
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
	d, _, _ = c.netmakerDesired(nst)
	if _, ok := d.Removed[recs[0].PublicKey.String()]; !ok || len(d.Gateways) != 0 {
		t.Errorf("removed host-b: removed %v, gateways %+v", d.Removed, d.Gateways)
	}

	// A policy Netmaker cannot express: reported, tags and ACLs left
	// alone, admission and removal go on.
	c.mu.Lock()
	pol := *c.mesh
	withPolicy, err := spec.Parse(append(spec0, "policy:\n  segments:\n    - name: vault\n      match: {labels: {app: vault}}\n"...))
	if err != nil {
		t.Fatal(err)
	}
	pol.Policy = withPolicy.Policy
	c.mesh = &pol
	c.mu.Unlock()
	d, policyErr, err = c.netmakerDesired(nst)
	if err != nil || policyErr == nil || !strings.Contains(policyErr.Error(), "vault") || !d.SkipPolicy || len(d.Removed) != 3 {
		t.Errorf("refused policy: err %v, policy %v, skip %v, removed %d", err, policyErr, d.SkipPolicy, len(d.Removed))
	}
}

// TestNetmakerRemovalSurvivesRestart: which hosts StateMesh admitted and
// dropped is kept in the store, so a controller restarted after a node's
// quarantine (or before its removal from the registry) still has its
// Netmaker host removed. Issue 17, item 5: it was kept in memory only.
func TestNetmakerRemovalSurvivesRestart(t *testing.T) {
	cl, err := netmaker.NewClient("http://127.0.0.1:1", "t", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, ctx := runSmall(t, Config{Netmaker: &NetmakerConfig{Client: cl, Every: time.Hour,
		Networks: map[string]netmaker.NetworkSpec{"eu-central": {Name: "nm-eu", AddressRange: "10.201.0.0/16"}}}})
	key := func() netmap.Key { k, _ := netmap.GeneratePrivateKey(); return k.PublicKey() }
	a := &NodeRecord{Name: "host-a", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key()}
	b := &NodeRecord{Name: "host-b", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key()}
	set := func(rs ...*NodeRecord) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.nodes = map[string]*NodeRecord{}
		for _, r := range rs {
			c.nodes[r.Name] = r
		}
	}
	set(a, b)
	st, err := c.loadNetmakerState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.netmakerDesired(st); err != nil {
		t.Fatal(err)
	}
	if err := c.saveNetmakerState(ctx, st); err != nil {
		t.Fatal(err)
	}
	// The controller restarts; meanwhile host-a was quarantined and
	// host-b removed from the registry.
	qa := *a
	qa.State = topology.StateQuarantined
	set(&qa)
	st2, err := c.loadNetmakerState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := c.netmakerDesired(st2)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*NodeRecord{a, b} {
		if _, ok := d.Removed[n.PublicKey.String()]; !ok {
			t.Errorf("after a restart, %s's host is not removed from Netmaker (removed: %v)", n.Name, d.Removed)
		}
	}
	if err := c.saveNetmakerState(ctx, st2); err != nil {
		t.Fatal(err)
	}
	// And the drop time is kept: a second restart reports the same.
	st3, _ := c.loadNetmakerState(ctx)
	d3, _, _ := c.netmakerDesired(st3)
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
	cl, err := netmaker.NewClient("http://127.0.0.1:1", "t", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := runSmall(t, Config{Netmaker: &NetmakerConfig{Client: cl, Every: time.Hour,
		Networks: map[string]netmaker.NetworkSpec{"eu-central": {Name: "nm-eu", AddressRange: "10.201.0.0/16"}}}})
	st := &netmakerState{seen: map[string]string{}, gone: map[string]time.Time{}}
	rep := netmaker.Report{Ungated: true, Calls: 9, Unattested: []string{"laptop in nm-eu"},
		Removals: []netmaker.Removal{{Host: "intruder", Network: "nm-eu", Unattested: true}}}
	c.recordNetmaker(st, rep, nil)
	c.recordNetmaker(st, rep, nil)
	c.mu.RLock()
	b := c.backendsLocked()
	c.mu.RUnlock()
	if len(b) != 1 || b[0].RemovedUnattested != 2 || !b[0].Ungated || !slices.Equal(b[0].Unattested, []string{"laptop in nm-eu"}) {
		t.Errorf("backend status: %+v", b)
	}
	rec := httptest.NewRecorder()
	c.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if want := `statemesh_netmaker_unattested_hosts_total{outcome="removed"} 2`; !strings.Contains(rec.Body.String(), want) {
		t.Errorf("metrics lack %s", want)
	}
}
