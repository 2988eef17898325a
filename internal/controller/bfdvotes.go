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

// tallyLocked counts the fresh votes on gateway g: how many of its region
// peers that reported within the heartbeat timeout see it down, of all.
func (c *Controller) tallyLocked(g string, now time.Time) (down, total int) {
	for reporter, isDown := range c.bfdVotes[g] {
		st, ok := c.status[reporter]
		if !ok || now.Sub(st.at) > c.cfg.HeartbeatTimeout {
			continue // a silent reporter's view is stale
		}
		total++
		if isDown {
			down++
		}
	}
	return down, total
}

// votedDown reports whether most of gateway g's fresh region peers see it
// down, with the tally for the health record's reason.
func (c *Controller) votedDownLocked(g string, now time.Time) (bool, string) {
	down, total := c.tallyLocked(g, now)
	return total > 0 && down*2 > total, fmt.Sprintf("BFD: %d of %d gateways of its region see it down", down, total)
}

// vouchFactor bounds how long BFD can vouch for a silent gateway: up to
// vouchFactor heartbeat timeouts without a heartbeat.
const vouchFactor = 10

// vouchedLocked reports whether most of gateway g's fresh region peers see
// its BFD sessions up. A gateway whose heartbeats stopped but whose BIRD
// still answers BFD has lost its agent (a crash, a restart, an upgrade),
// not its data plane: it keeps forwarding with its last configuration, so
// it stays designated while its peers vouch for it, for at most
// vouchFactor heartbeat timeouts (an agent that stays away cannot apply
// changes). A host that dies takes BFD with it and is voted down at once.
func (c *Controller) vouchedLocked(g string, now time.Time) bool {
	down, total := c.tallyLocked(g, now)
	return total > 0 && (total-down)*2 > total
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
	if rs == nil || rs.BIRD != "running" {
		// No BIRD, no view: the reporter's earlier votes lapse (they would
		// otherwise count, or vouch, for as long as it keeps reporting).
		for g, votes := range c.bfdVotes {
			if _, ok := votes[reporter]; !ok {
				continue
			}
			delete(votes, reporter)
			if verdict, _ := c.votedDownLocked(g, now); verdict != c.bfdDown[g] {
				c.bfdDown[g] = verdict
				changed[g] = verdict
			}
		}
		return changed
	}
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
