package controller

import (
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
	// Without BIRD running, a report has no view.
	if ch := c.recordBFDVotesLocked("a2", &api.RoutingStatus{BIRD: "bird exited"}, now); len(ch) != 0 {
		t.Errorf("a report without BIRD voted: %v", ch)
	}
}
