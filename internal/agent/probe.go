package agent

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/agent/pathprobe"
	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// maxProbeTargets bounds the paths one agent measures per round (a gateway
// of the design limit has 15 other gateways in its region and 19 regions
// × 16 beyond): the cost is a few small echoes and an MTU check each.
const maxProbeTargets = 64

// probeTargets are the gateways among the map's peers: a node measures its
// way to its region's gateways, a gateway to every other gateway.
func probeTargets(m netmap.Map) []netmap.Peer {
	var out []netmap.Peer
	for _, p := range m.Peers {
		if p.Role == netmap.RoleGateway {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netmap.Peer) int { return strings.Compare(a.Name, b.Name) })
	if len(out) > maxProbeTargets {
		out = out[:maxProbeTargets]
	}
	return out
}

// hostAddr is a peer's own overlay IPv4 address (its /32 allowed IP).
func hostAddr(p netmap.Peer) (netip.Addr, bool) {
	for _, a := range p.AllowedIPs {
		if a.Addr().Is4() && a.Bits() == 32 {
			return a.Addr(), true
		}
	}
	return netip.Addr{}, false
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		m := a.prev
		a.mu.Unlock()
		var paths []api.PathProbe
		for _, p := range probeTargets(m) {
			addr, ok := hostAddr(p)
			if !ok {
				continue
			}
			r := pr.Measure(ctx, addr, m.Interface.MTU, pathprobe.Options{})
			if ctx.Err() != nil {
				return
			}
			paths = append(paths, api.PathProbe{Peer: p.Name, Region: p.Region, RTTMillis: float64(r.RTT.Microseconds()) / 1000,
				Loss: r.Loss, PathMTU: r.PathMTU, PlannedMTU: r.Planned, At: time.Now()})
			if r.Loss < 1 && r.PathMTU > 0 && r.PathMTU < r.Planned {
				a.log.Warn("path MTU below the planned MTU", "peer", p.Name, "path_mtu", r.PathMTU, "planned", r.Planned)
			}
		}
		a.mu.Lock()
		a.paths = paths
		a.mu.Unlock()
		t.Reset(a.cfg.ProbeEvery)
	}
}
