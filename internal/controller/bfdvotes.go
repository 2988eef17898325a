package controller

import (
	"fmt"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// BIRD mode: a gateway's region peers see it over BFD within a few
// hundred milliseconds, long before its heartbeats are missed. When most
// of the gateways of its own region report their BFD session to it down,
// it is unhealthy at once: designation moves without waiting for the
// heartbeat timeout. Peers in other regions do not vote (a WAN cut is
// routed around by BGP; it does not make the gateway unfit for its
// clusters), and while the votes stand a healthy heartbeat does not bring
// it back: the peers must see it again first.

// bfdDown returns the gateways of reporter's region that reporter's BFD
// sessions see down or up, from its latest routing report.
func bfdView(reporter *NodeRecord, rs *api.RoutingStatus, nodes map[string]*NodeRecord) (down, up []string) {
	if rs == nil || rs.BIRD != "running" {
		return nil, nil
	}
	for _, s := range rs.Sessions {
		p, ok := nodes[s.Peer]
		if !ok || p.Role != netmap.RoleGateway || p.Region != reporter.Region || p.Name == reporter.Name {
			continue
		}
		switch s.BFD {
		case "Down":
			down = append(down, p.Name)
		case "Up":
			up = append(up, p.Name)
		}
	}
	return down, up
}

// votedDown reports whether most of gateway g's fresh region peers see it
// down, with the tally for the health record's reason.
func (c *Controller) votedDownLocked(g string, now time.Time) (bool, string) {
	votes := c.bfdVotes[g]
	down, total := 0, 0
	for reporter, isDown := range votes {
		st, ok := c.status[reporter]
		if !ok || now.Sub(st.at) > c.cfg.HeartbeatTimeout {
			continue // a silent reporter's view is stale
		}
		total++
		if isDown {
			down++
		}
	}
	return total > 0 && down*2 > total, fmt.Sprintf("BFD: %d of %d gateways of its region see it down", down, total)
}

// recordBFDVotesLocked stores reporter's view and returns the gateways
// whose verdict changed (to down: true).
func (c *Controller) recordBFDVotesLocked(reporter string, rs *api.RoutingStatus, now time.Time) map[string]bool {
	n, ok := c.nodes[reporter]
	if !ok || n.Role != netmap.RoleGateway {
		return nil
	}
	down, up := bfdView(n, rs, c.nodes)
	changed := map[string]bool{}
	set := func(g string, isDown bool) {
		if c.bfdVotes[g] == nil {
			c.bfdVotes[g] = map[string]bool{}
		}
		c.bfdVotes[g][reporter] = isDown
		verdict, _ := c.votedDownLocked(g, now)
		if verdict != c.bfdDown[g] {
			c.bfdDown[g] = verdict
			changed[g] = verdict
		}
	}
	for _, g := range down {
		set(g, true)
	}
	for _, g := range up {
		set(g, false)
	}
	return changed
}
