package controller

import (
	"testing"

	"github.com/statemesh/statemesh/internal/api"
)

func TestLatencyMatrix(t *testing.T) {
	p := func(from, to string, rtt, loss float64, mtu int) api.Path {
		return api.Path{FromRegion: from, PathProbe: api.PathProbe{Region: to, RTTMillis: rtt, Loss: loss, PathMTU: mtu}}
	}
	got := LatencyMatrix([]api.Path{
		p("us", "eu", 80, 0, 1440),
		p("eu", "us", 81, 0, 1440),
		p("eu", "us", 90, 0, 1340),
		p("eu", "us", 0, 1, 0), // unreachable: counts in loss, not in RTT
		p("eu", "eu", 0.4, 0, 1440),
	})
	want := []api.RegionLatency{
		{From: "eu", To: "eu", RTTMillis: 0.4, Paths: 1, MinPathMTU: 1440},
		{From: "eu", To: "us", RTTMillis: 90, Loss: 1.0 / 3, Paths: 3, MinPathMTU: 1340},
		{From: "us", To: "eu", RTTMillis: 80, Paths: 1, MinPathMTU: 1440},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d cells, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("cell %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}
