package agent

import (
	"context"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/agent/pathprobe"
	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// Probe bounds: a round measures at most maxProbeTargets paths on a
// gateway (the design limit gives it 15 other gateways in its region and
// 19 regions × 16 beyond: the window rotates, so every path is measured
// every few rounds) and maxNodeTargets on a node (of its region's up to
// 16 gateways), so the gateways' load grows with the nodes, not with
// nodes × gateways. A healthy path costs 3 small echoes and one echo of
// the planned size; the MTU search runs only when that one is lost.
const (
	maxProbeTargets = 64
	maxNodeTargets  = 4
)

// probeTargets are this round's gateways among the map's peers: a node
// measures its way to its region's gateways, a gateway to every other
// gateway; round rotates the window when there are more than the bound.
func probeTargets(m netmap.Map, round int) []netmap.Peer {
	var all []netmap.Peer
	for _, p := range m.Peers {
		if p.Role == netmap.RoleGateway {
			all = append(all, p)
		}
	}
	slices.SortFunc(all, func(a, b netmap.Peer) int { return strings.Compare(a.Name, b.Name) })
	limit := maxProbeTargets
	if m.Self.Role != netmap.RoleGateway {
		limit = maxNodeTargets
	}
	if len(all) <= limit {
		return all
	}
	// Each prober starts at a place of its own, so the nodes of a region
	// do not all probe the same gateways in the same round.
	h := fnv.New32a()
	h.Write([]byte(m.Self.Name))
	out := make([]netmap.Peer, 0, limit)
	start := (int(h.Sum32()%uint32(len(all))) + round*limit) % len(all)
	for i := range limit {
		out = append(out, all[(start+i)%len(all)])
	}
	return out
}

// hostAddr is the peer's own overlay address the probes go to: its IPv4
// address (the /32 allowed IP), else its IPv6 one (the /128). Both cross
// the same WireGuard hop, so either finds the same path MTU; what the
// underlay's family changes is WireGuard's overhead, which the plan
// already subtracted from the planned MTU the result is compared with.
func hostAddr(p netmap.Peer) (netip.Addr, bool) {
	var v6 netip.Addr
	for _, a := range p.AllowedIPs {
		switch {
		case a.Addr().Is4() && a.Bits() == 32:
			return a.Addr(), true
		case a.Addr().Is6() && a.Bits() == 128 && !v6.IsValid():
			v6 = a.Addr()
		}
	}
	return v6, v6.IsValid()
}

// probeLoop measures the paths to the gateways every ProbeEvery; the
// latest results go into the status report.
func (a *Agent) probeLoop(ctx context.Context) {
	if a.cfg.ProbeEvery < 0 {
		return
	}
	pr, err := pathprobe.NewProber()
	if err != nil {
		a.log.Warn("path probes off", "err", err)
		return
	}
	defer pr.Close()
	t := time.NewTimer(2 * time.Second) // first round soon after start
	defer t.Stop()
	latest := map[string]api.PathProbe{} // by peer, across rounds
	for round := 0; ; round++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		m := a.prev
		a.mu.Unlock()
		current := map[string]bool{}
		for _, p := range m.Peers {
			current[p.Name] = p.Role == netmap.RoleGateway
		}
		for name := range latest {
			if !current[name] {
				delete(latest, name) // gone from the map
			}
		}
		for _, p := range probeTargets(m, round) {
			addr, ok := hostAddr(p)
			if !ok {
				continue
			}
			r := pr.Measure(ctx, addr, m.Interface.MTU, pathprobe.Options{})
			if ctx.Err() != nil {
				return
			}
			latest[p.Name] = api.PathProbe{Peer: p.Name, Region: p.Region, RTTMillis: float64(r.RTT.Microseconds()) / 1000,
				Loss: r.Loss, PathMTU: r.PathMTU, PlannedMTU: r.Planned, At: time.Now()}
			if r.Loss < 1 && r.PathMTU > 0 && r.PathMTU < r.Planned {
				a.log.Warn("path MTU below the planned MTU", "peer", p.Name, "path_mtu", r.PathMTU, "planned", r.Planned)
			}
		}
		paths := slices.SortedFunc(maps.Values(latest), func(x, y api.PathProbe) int { return strings.Compare(x.Peer, y.Peer) })
		a.mu.Lock()
		a.paths = paths
		a.pathsRound++
		a.mu.Unlock()
		t.Reset(a.cfg.ProbeEvery)
	}
}
