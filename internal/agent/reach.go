package agent

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/statemesh/statemesh/internal/agent/pathprobe"
	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// WAN reachability (baseline mode, without BIRD): a gateway echoes the
// other regions' gateways through the mesh a few times a second and
// reports whether it still reaches any of them. A gateway that reaches none
// while a gateway of its own region does has lost its WAN link; the
// controller then moves its clusters to that peer (controller.ReportStatus).
// BIRD mode needs none of this: BFD and BGP route around a cut link.
//
// Cost: a gateway echoes only reachQuietTargets remote gateways a round
// while answers come, and maxReachTargets once it has heard none for
// reachDoubtAfter (or never has, or reads as cut), so a cut is still
// confirmed against many gateways before CutAfter. Echoing 8 a round all
// the time (32 echoes a second per gateway, and as many arriving from the
// others) was, with the lab's path probes, nearly all of a gateway's
// WireGuard traffic in a 20-region lab (133 ICMP messages a second each
// way), where the 40 gateways' echoes through wireguard-go starved the
// agents of the 2-core machine.
//
// Hysteresis, so that a lossy link does not flap designations: the
// gateway is cut only after no remote gateway answered for CutAfter, and
// it is back only after they answered for RecoverAfter without a silence
// of CutAfter again. A link that drops packets, or is up and down for
// less than CutAfter at a time, never reads as cut.

// Reach defaults.
const (
	reachEvery        = 250 * time.Millisecond
	reachEchoTimeout  = 200 * time.Millisecond
	reachCutAfter     = 1200 * time.Millisecond
	reachRecoverAfter = 3 * time.Second
	// reachStartGrace: a gateway that never heard back from any remote
	// gateway (it just started; the handshakes are not done) is judged
	// only after this long.
	reachStartGrace   = 15 * time.Second
	maxReachTargets   = 8 // echoed per round in doubt (rotating through the rest)
	reachQuietTargets = 1 // echoed per round while answers come
	// reachDoubtAfter: without an answer for this long (the last round's
	// echo went unanswered) the gateway echoes maxReachTargets a round, so
	// CutAfter sees three rounds of them.
	reachDoubtAfter = reachEvery + reachEvery/2
)

// reachTracker decides, from echo results, whether the gateway reaches
// the other regions. It is pure: the clock is passed in.
type reachTracker struct {
	cutAfter, recoverAfter time.Duration
	start                  time.Time // when remote gateways were first in the map
	everOK                 bool      // some remote gateway answered once
	lastAny                time.Time // the latest answer from any remote gateway
	lastOK                 map[string]time.Time
	cut                    bool
	okSince                time.Time // during a cut: since when answers came without a silence
}

func newReachTracker(now time.Time) *reachTracker {
	return &reachTracker{cutAfter: reachCutAfter, recoverAfter: reachRecoverAfter, lastOK: map[string]time.Time{}}
}

// observe records an echo to peer.
func (r *reachTracker) observe(peer string, ok bool, now time.Time) {
	if ok {
		r.lastOK[peer] = now
		r.everOK = true
		if now.After(r.lastAny) {
			r.lastAny = now
		}
	}
}

// targets is how many remote gateways to echo in the round at now: a few
// while answers come, many once none came for reachDoubtAfter, none ever
// did, or the gateway reads as cut (so that a cut is confirmed, and its
// end seen, against many gateways).
func (r *reachTracker) targets(now time.Time) int {
	if !r.everOK || r.cut || now.Sub(r.lastAny) >= reachDoubtAfter {
		return maxReachTargets
	}
	return reachQuietTargets
}

// pickTargets returns n of peers from cursor on (wrapping, each at most
// once) and the cursor for the next round.
func pickTargets[T any](peers []T, cursor, n int) ([]T, int) {
	if len(peers) == 0 {
		return nil, 0
	}
	n = min(n, len(peers))
	out := make([]T, 0, n)
	for i := range n {
		out = append(out, peers[(cursor+i)%len(peers)])
	}
	return out, (cursor + n) % len(peers)
}

// update computes the state over peers (the remote gateways of the current
// map) at now: how many answered within CutAfter, and whether the gateway
// is cut off. It reports whether the cut state changed.
func (r *reachTracker) update(peers []string, now time.Time) (st api.WANReach, changed bool) {
	for p := range r.lastOK {
		if !slices.Contains(peers, p) {
			delete(r.lastOK, p)
		}
	}
	st.Probed = len(peers)
	for _, p := range peers {
		if now.Sub(r.lastOK[p]) < r.cutAfter {
			st.Reached++
		}
	}
	was := r.cut
	if st.Probed > 0 && r.start.IsZero() {
		r.start = now
	}
	switch {
	case st.Probed == 0:
		r.cut, r.okSince, r.start = false, time.Time{}, time.Time{}
	case !r.cut:
		// Silent for CutAfter after answers; a gateway that never heard
		// back (it just came up, its handshakes are not done) only after
		// the start grace.
		grace := r.cutAfter
		if !r.everOK {
			grace = reachStartGrace
		}
		r.cut = st.Reached == 0 && now.Sub(r.start) >= grace
		r.okSince = time.Time{}
	case st.Reached == 0:
		r.okSince = time.Time{}
	case r.okSince.IsZero():
		r.okSince = now
	case now.Sub(r.okSince) >= r.recoverAfter:
		r.cut, r.okSince = false, time.Time{}
	}
	st.Cut = r.cut
	return st, r.cut != was
}

// remoteGateways are the gateways of other regions in the map, by name.
func remoteGateways(m netmap.Map) []netmap.Peer {
	var out []netmap.Peer
	for _, p := range m.Peers {
		if p.Role == netmap.RoleGateway && p.Region != "" && p.Region != m.Self.Region {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netmap.Peer) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// reachLoop runs on baseline-mode gateways.
func (a *Agent) reachLoop(ctx context.Context) {
	if a.cfg.Role != netmap.RoleGateway || a.cfg.ProbeEvery < 0 {
		return
	}
	pr, err := pathprobe.NewProber()
	if err != nil {
		a.log.Warn("WAN reachability probes off: a cut WAN link is not failed over without BIRD", "err", err)
		return
	}
	defer pr.Close()
	tr := newReachTracker(time.Now())
	t := time.NewTicker(reachEvery)
	defer t.Stop()
	cursor := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		m := a.prev
		a.mu.Unlock()
		if m.Routing != nil {
			a.setReach(nil) // BIRD mode: BFD decides
			continue
		}
		peers := remoteGateways(m)
		names := make([]string, len(peers))
		for i, p := range peers {
			names[i] = p.Name
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		var round []netmap.Peer
		round, cursor = pickTargets(peers, cursor, tr.targets(time.Now()))
		for _, p := range round {
			addr, ok := hostAddr(p)
			if !ok {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, ok := pr.Echo(ctx, addr, 64, reachEchoTimeout)
				mu.Lock()
				tr.observe(p.Name, ok, time.Now())
				mu.Unlock()
			}()
		}
		wg.Wait()
		st, changed := tr.update(names, time.Now())
		a.setReach(&st)
		if changed {
			if st.Cut {
				a.log.Warn("no other region's gateway answers: this gateway's WAN link looks cut", "probed", st.Probed)
			} else {
				a.log.Info("other regions' gateways answer again", "reached", st.Reached, "probed", st.Probed)
			}
			a.kickReport()
		}
	}
}

func (a *Agent) setReach(st *api.WANReach) {
	a.mu.Lock()
	a.reach = st
	a.mu.Unlock()
}
