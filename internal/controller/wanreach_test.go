package controller

import (
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
)

// TestWANCutMovesClusters: baseline mode, without BIRD. A gateway that
// reaches none of the other regions' gateways while a gateway of its
// region does is unfit for its clusters (its WAN link is cut); one whose
// region peers are cut too keeps them (nobody would do better); it is
// healthy again once it reaches them.
func TestWANCutMovesClusters(t *testing.T) {
	c, ctx := runSmall(t, Config{HeartbeatTimeout: 5 * time.Second})
	gws := enrollGatewayPair(t, ctx, c)
	report, waitHealth := gws.report, gws.waitHealth
	reach, cut := api.WANReach{Probed: 2, Reached: 2}, api.WANReach{Probed: 2, Cut: true}

	// Both cut (the region's uplink, or the other region is down): the
	// first to report it may move to the other while the other's last
	// report still vouched for it, and is back at its next report; once
	// both reported, both carry their clusters (nobody would do better).
	report("gw1", cut)
	waitHealth("gw1", false) // gw0's last report vouched for gw0
	report("gw0", cut)
	waitHealth("gw0", true) // gw1 is no healthy peer that reaches
	report("gw1", cut)
	waitHealth("gw1", true) // gw0 is cut too
	waitHealth("gw0", true)

	// Only gw0 cut: its clusters move to gw1.
	report("gw1", reach)
	waitHealth("gw1", true)
	report("gw0", cut)
	h := waitHealth("gw0", false)
	if !strings.Contains(h.Reason, "WAN") || !strings.Contains(h.Reason, "gw1") {
		t.Errorf("reason %q does not say why", h.Reason)
	}
	regions, err := c.Regions()
	if err != nil {
		t.Fatal(err)
	}
	for cl, g := range regions[0].Designation {
		if g == "gw0" {
			t.Errorf("cluster %s still designated to the cut gateway", cl)
		}
	}
	// Its WAN back: healthy again.
	report("gw0", reach)
	waitHealth("gw0", true)
}
