package controller

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

func TestBFDVotes(t *testing.T) {
	now := time.Now()
	c := &Controller{
		cfg:      Config{HeartbeatTimeout: 1500 * time.Millisecond},
		status:   map[string]statusEntry{},
		bfdVotes: map[string]map[string]bool{},
		bfdDown:  map[string]bool{},
		nodes:    map[string]*NodeRecord{},
	}
	for _, n := range []struct{ name, region string }{{"a1", "a"}, {"a2", "a"}, {"a3", "a"}, {"b1", "b"}} {
		c.nodes[n.name] = &NodeRecord{Name: n.name, Region: n.region, Role: netmap.RoleGateway}
	}
	report := func(from string, at time.Time, sessions ...api.BGPSession) map[string]bool {
		c.status[from] = statusEntry{at: at}
		return c.recordBFDVotesLocked(from, &api.RoutingStatus{BIRD: "running", Sessions: sessions}, now)
	}
	s := func(peer, bfd string) api.BGPSession { return api.BGPSession{Peer: peer, BFD: bfd} }

	// A session the reporter's BIRD has not seen up yet (its first
	// seconds) is no vote: a region's bring-up marks nobody down.
	if ch := report("a2", now, s("a1", "Starting"), s("a3", "Starting")); len(ch) != 0 || len(c.bfdVotes["a1"]) != 0 {
		t.Errorf("a starting session voted: %v %v", ch, c.bfdVotes)
	}
	// Another region's view does not count: a WAN cut is BGP's business.
	if ch := report("b1", now, s("a1", "Down")); len(ch) != 0 {
		t.Errorf("a gateway of another region voted: %v", ch)
	}
	// One of two region peers: not a majority.
	report("a3", now, s("a1", "Up"), s("a2", "Up"))
	if ch := report("a2", now, s("a1", "Down"), s("a3", "Up")); len(ch) != 0 {
		t.Errorf("1 of 2 turned the verdict: %v", ch)
	}
	if down, _ := c.votedDownLocked("a1", now); down {
		t.Error("a1 down with 1 of 2 votes")
	}
	// Both: down, once.
	if ch := report("a3", now, s("a1", "Down"), s("a2", "Up")); !ch["a1"] || len(ch) != 1 {
		t.Errorf("2 of 2: %v", ch)
	}
	if down, why := c.votedDownLocked("a1", now); !down || why != "BFD: 2 of 2 gateways of its region see it down" {
		t.Errorf("verdict %v %q", down, why)
	}
	// A reporter that went silent no longer counts.
	c.status["a3"] = statusEntry{at: now.Add(-time.Minute)}
	if down, _ := c.votedDownLocked("a1", now); !down {
		t.Error("1 of 1 fresh votes should hold")
	}
	c.status["a3"] = statusEntry{at: now}
	// Seen again by one of two: no longer a majority, up.
	if ch := report("a2", now, s("a1", "Up")); ch["a1"] || len(ch) != 1 {
		t.Errorf("recovery: %v", ch)
	}
	// Without BIRD running, a report has no view, and the reporter's
	// earlier one lapses: a3's "down" is now 1 of 1.
	if ch := c.recordBFDVotesLocked("a2", &api.RoutingStatus{BIRD: "bird exited"}, now); !ch["a1"] || len(ch) != 1 {
		t.Errorf("a2's view did not lapse with its BIRD: %v", ch)
	}
	if _, ok := c.bfdVotes["a1"]["a2"]; ok {
		t.Error("a2's vote on a1 kept after its BIRD exited")
	}
	if ch := c.recordBFDVotesLocked("a2", nil, now); len(ch) != 0 {
		t.Errorf("a second report without BIRD changed verdicts: %v", ch)
	}
}

// TestBFDVouchesForSilentGateway: a gateway whose heartbeats stop while its
// region peer still sees its BFD session up (its agent crashed or
// restarts; BIRD and WireGuard keep forwarding) stays healthy, for at most
// vouchFactor heartbeat timeouts; without the peer's view it is marked
// unhealthy after one timeout, as before.
func TestBFDVouchesForSilentGateway(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	const timeout = time.Second
	c, ctx := runSmall(t, Config{Now: clock, HeartbeatTimeout: timeout, HealthInterval: 5 * time.Millisecond})
	for _, name := range []string{"gw0", "gw1"} {
		enroll(t, ctx, c, api.CreateTokenRequest{Region: "eu-central", Role: "gateway"}, name, "gateway")
	}
	sees := func(peer, bfd string) *api.RoutingStatus {
		return &api.RoutingStatus{BIRD: "running", Sessions: []api.BGPSession{{Peer: peer, BFD: bfd}}}
	}
	report := func(name string, rs *api.RoutingStatus) {
		t.Helper()
		if err := c.ReportStatus(ctx, name, api.StatusReport{Healthy: true, AppliedRevision: 1, Routing: rs}); err != nil {
			t.Fatal(err)
		}
	}
	health := func(name string) HealthRecord {
		c.mu.RLock()
		defer c.mu.RUnlock()
		return c.health[name]
	}
	// settle lets the monitor run (it ticks every 5 ms of real time) and
	// the health record come back through the store's watch.
	settle := func() { time.Sleep(150 * time.Millisecond) }
	report("gw0", sees("gw1", "Up"))
	report("gw1", sees("gw0", "Up"))
	settle()
	if h := health("gw0"); !h.Healthy {
		t.Fatalf("gw0 not healthy at the start: %+v", h)
	}

	// gw0's agent goes silent; gw1 keeps reporting gw0's BFD up.
	for range 8 {
		advance(timeout)
		report("gw1", sees("gw0", "Up"))
		settle()
		if h := health("gw0"); !h.Healthy {
			t.Fatalf("silent gw0 marked unhealthy although its region peer sees its BFD up: %+v", h)
		}
	}
	// Beyond vouchFactor timeouts, silence wins.
	advance(3 * timeout)
	report("gw1", sees("gw0", "Up"))
	settle()
	if h := health("gw0"); h.Healthy || !strings.Contains(h.Reason, "no heartbeat") {
		t.Fatalf("gw0 silent for %d timeouts still healthy: %+v", vouchFactor+1, h)
	}

	// Back: gw0 reports again. Then gw1's BIRD stops: its old view lapses
	// and no longer vouches, so gw0's silence counts after one timeout.
	report("gw0", sees("gw1", "Up"))
	settle()
	if h := health("gw0"); !h.Healthy {
		t.Fatalf("gw0 not healthy after reporting again: %+v", h)
	}
	report("gw1", &api.RoutingStatus{BIRD: "bird exited"})
	advance(timeout + timeout/2)
	report("gw1", &api.RoutingStatus{BIRD: "bird exited"})
	settle()
	if h := health("gw0"); h.Healthy {
		t.Fatalf("gw0 silent, nobody's BFD sees it, still healthy: %+v", h)
	}
}

// TestBFDVerdictOutlivesTheReport: the report that turns a region peer's
// BFD verdict to down may be cancelled (the agent's request timed out
// under load) before the verdict is written; the verdict is written
// anyway, so a dead gateway does not stay designated until its heartbeat
// timeout. On the old code the write failed with "context canceled" and
// the verdict, already taken in memory, was never written (the lab of 20
// BIRD-mode regions logged it 255 times).
func TestBFDVerdictOutlivesTheReport(t *testing.T) {
	c, ctx := runSmall(t, Config{HeartbeatTimeout: 10 * time.Second})
	for _, name := range []string{"gw0", "gw1"} {
		enroll(t, ctx, c, api.CreateTokenRequest{Region: "eu-central", Role: "gateway"}, name, "gateway")
	}
	up := &api.RoutingStatus{BIRD: "running", Sessions: []api.BGPSession{{Peer: "gw1", BFD: "Up"}}}
	for _, name := range []string{"gw0", "gw1"} {
		if err := c.ReportStatus(ctx, name, api.StatusReport{Healthy: true, AppliedRevision: 1, Routing: up}); err != nil {
			t.Fatal(err)
		}
	}
	healthy := func(name string) bool {
		c.mu.RLock()
		defer c.mu.RUnlock()
		return c.health[name].Healthy
	}
	for deadline := time.Now().Add(3 * time.Second); !healthy("gw0"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("gw0 not healthy")
		}
	}
	// gw0 dies; gw1's report that says so is cancelled as it arrives.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	c.ReportStatus(cancelled, "gw1", api.StatusReport{Healthy: true, AppliedRevision: 1,
		Routing: &api.RoutingStatus{BIRD: "running", Sessions: []api.BGPSession{{Peer: "gw0", BFD: "Down"}}}})
	for deadline := time.Now().Add(2 * time.Second); healthy("gw0"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("gw0 still healthy 2 s after its region peer saw it down (heartbeat timeout 10 s): the verdict was lost with the report")
		}
	}
}
