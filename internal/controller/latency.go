package controller

import (
	"slices"
	"strings"

	"github.com/statemesh/statemesh/internal/api"
)

// LatencyMatrix reduces path probes to one cell per (from region, to
// region): the median RTT of the answered paths, the mean loss, the
// smallest path MTU. Cells are sorted by from, then to.
func LatencyMatrix(paths []api.Path) []api.RegionLatency {
	type key struct{ from, to string }
	type agg struct {
		rtts   []float64
		loss   float64
		n, mtu int
	}
	cells := map[key]*agg{}
	for _, p := range paths {
		k := key{p.FromRegion, p.Region}
		a := cells[k]
		if a == nil {
			a = &agg{}
			cells[k] = a
		}
		a.n++
		a.loss += p.Loss
		if p.Loss < 1 {
			a.rtts = append(a.rtts, p.RTTMillis)
		}
		if p.PathMTU > 0 && (a.mtu == 0 || p.PathMTU < a.mtu) {
			a.mtu = p.PathMTU
		}
	}
	out := make([]api.RegionLatency, 0, len(cells))
	for k, a := range cells {
		c := api.RegionLatency{From: k.from, To: k.to, Loss: a.loss / float64(a.n), Paths: a.n, MinPathMTU: a.mtu}
		if len(a.rtts) > 0 {
			slices.Sort(a.rtts)
			c.RTTMillis = a.rtts[len(a.rtts)/2]
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b api.RegionLatency) int {
		if c := strings.Compare(a.From, b.From); c != 0 {
			return c
		}
		return strings.Compare(a.To, b.To)
	})
	return out
}
