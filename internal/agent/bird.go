package agent

import (
	"context"
	"path/filepath"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/birdcfg"
	"github.com/statemesh/statemesh/internal/netmap"
)

// syncBIRD renders the gateway's BIRD configuration from its map and
// installs it (validated first; a refused one is never installed), or
// stops BIRD when the map has no routing.
func (a *Agent) syncBIRD(ctx context.Context, m netmap.Map) error {
	a.mu.Lock()
	runner := a.bird
	a.mu.Unlock()
	if m.Routing == nil {
		if runner == nil && !a.birdSwept {
			a.birdSwept = true
			if birdcfg.StopStale(filepath.Join(a.cfg.DataDir, "bird")) {
				a.log.Info("stopped a bird left by an earlier run: the gateway is not in BIRD mode")
			}
		}
		if runner != nil {
			runner.Stop()
			a.mu.Lock()
			a.bird = nil
			a.mu.Unlock()
			a.log.Info("bird stopped: the gateway left BIRD mode")
		}
		return nil
	}
	conf, err := birdcfg.Render(m.Self.Name, m.Routing)
	if err != nil {
		return err
	}
	if runner == nil {
		runner = &birdcfg.Runner{Dir: filepath.Join(a.cfg.DataDir, "bird"), Log: a.log, OnChange: a.kickReport}
		a.mu.Lock()
		a.bird, a.bfdSeenUp, a.birdSince = runner, map[string]bool{}, time.Now()
		a.mu.Unlock()
	}
	changed, err := runner.Apply(ctx, conf)
	if err != nil {
		return err
	}
	if changed {
		a.log.Info("bird configured", "links", len(m.Routing.Links), "originates", len(m.Routing.Originate))
	}
	return nil
}

// routingStatus reports BIRD and its sessions for the status report; nil
// outside BIRD mode.
func (a *Agent) routingStatus(ctx context.Context, m netmap.Map) *api.RoutingStatus {
	if m.Routing == nil {
		return nil
	}
	a.mu.Lock()
	rerr, lerr, runner := a.routingErr, a.linkErr, a.bird
	a.mu.Unlock()
	if rerr != nil {
		return &api.RoutingStatus{BIRD: rerr.Error()}
	}
	if runner == nil {
		return &api.RoutingStatus{BIRD: "not started"}
	}
	st, err := runner.Status(ctx)
	if err != nil {
		return &api.RoutingStatus{BIRD: err.Error()}
	}
	rs := &api.RoutingStatus{BIRD: "running"}
	if lerr != nil {
		rs.Links = lerr.Error()
	}
	bfd := map[string]string{}
	a.mu.Lock()
	for _, s := range st.BFD {
		if s.State == "Up" && a.bfdSeenUp != nil {
			a.bfdSeenUp[s.Address] = true
		}
		bfd[s.Address] = bfdReported(s.State, a.bfdSeenUp[s.Address], time.Since(a.birdSince))
	}
	a.mu.Unlock()
	links := map[string]netmap.BackboneLink{}
	for _, l := range m.Routing.Links {
		links["bb_"+l.Interface] = l
	}
	for _, p := range st.Protocols {
		if p.Proto != "BGP" {
			continue
		}
		s := api.BGPSession{Name: p.Name, State: p.State}
		s.BGPState, _, _ = strings.Cut(p.Info, " ")
		if l, ok := links[p.Name]; ok {
			s.Peer, s.Neighbor, s.BFD = l.Peer, l.PeerAddress.String(), bfd[l.PeerAddress.String()]
		} else {
			for _, x := range m.Routing.External {
				if "ext_"+strings.ReplaceAll(x.Name, "-", "_") == p.Name {
					s.Peer, s.Neighbor, s.BFD = x.Name, x.Address.String(), bfd[x.Address.String()]
				}
			}
		}
		rs.Sessions = append(rs.Sessions, s)
	}
	return rs
}

// kickReport makes the status loop report now (a BGP or BFD session
// changed: the controller acts on what the region's gateways see).
func (a *Agent) kickReport() {
	select {
	case a.reportKick <- struct{}{}:
	default:
	}
}

// bfdStartGrace is how long after BIRD started a BFD session that has
// never been up is reported as starting rather than down.
const bfdStartGrace = 10 * time.Second

// bfdReported is the BFD state a gateway reports for one session: BIRD's,
// except that a session that has not been up since this BIRD started, in
// its first bfdStartGrace, is "Starting". The controller counts "Down"
// as a vote that the region peer at the other end is down (bfdvotes.go);
// at a region's bring-up every session is Down until both ends' BIRDs
// answer, and those votes marked healthy gateways down for a second or
// two, moving their clusters back and forth. A peer that was seen up and
// went down is voted down at once, as before; one never seen up is voted
// down once the grace is over (a gateway that joins a running region is
// not ready until its region peers see it).
func bfdReported(state string, seenUp bool, sinceStart time.Duration) string {
	if state == "Down" && !seenUp && sinceStart < bfdStartGrace {
		return "Starting"
	}
	return state
}
