package controller

import (
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// TestClientsGatewayPinned: a client's file names the gateway it was
// issued with, and the region's clients stay there through health changes
// (the lab failed in CI when a gateway's BFD flap at bring-up moved them to
// a gateway the client's file does not name). Asking for a configuration
// while the pinned gateway is unhealthy moves the region's clients to a
// healthy one, with an event; the pin is in the store and survives a
// rebuild of the index.
func TestClientsGatewayPinned(t *testing.T) {
	c, ctx := runSpec(t, Config{HeartbeatTimeout: 5 * time.Second}, "../../examples/policy.yaml")
	gws := enrollGatewayPair(t, ctx, c)
	report, waitHealth := gws.report, gws.waitHealth
	reach, cut := api.WANReach{Probed: 2, Reached: 2}, api.WANReach{Probed: 2, Cut: true}
	k, _ := netmap.GeneratePrivateKey()
	cfg, err := c.AddClient(ctx, api.AddClientRequest{Name: "laptop", Region: "eu-central", PublicKey: k.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	first := cfg.PeerName // rendezvous hashing's choice with both healthy
	second := map[string]string{"gw0": "gw1", "gw1": "gw0"}[first]
	served := func() string {
		t.Helper()
		for _, cl := range c.Clients() {
			if cl.Name == "laptop" {
				return cl.Gateway
			}
		}
		t.Fatal("laptop not listed")
		return ""
	}
	// first's WAN is cut: it is unhealthy, and its clients stay.
	report(second, reach)
	report(first, cut)
	waitHealth(first, false)
	if got := served(); got != first {
		t.Fatalf("clients moved to %s when %s went unhealthy: the client's file names %s", got, first, first)
	}
	// Asking for the configuration now moves them to the healthy gateway.
	moved, err := c.ClientConfig(ctx, "laptop")
	if err != nil || moved.PeerName != second || served() != second {
		t.Fatalf("configuration while %s is unhealthy: peer %q, served by %q, %v", first, moved.PeerName, served(), err)
	}
	if !hasEvent(c, "clients-gateway", "served by "+second+" (was "+first+")") {
		t.Errorf("no event for the move: %+v", c.Events(20))
	}
	// first is back: rendezvous hashing would prefer it, the pin keeps
	// the clients where their new files point.
	report(first, reach)
	waitHealth(first, true)
	if got := served(); got != second {
		t.Fatalf("clients moved back to %s", got)
	}
	again, err := c.ClientConfig(ctx, "laptop")
	if err != nil || again.PeerName != second {
		t.Fatalf("configuration with both healthy: peer %q, %v", again.PeerName, err)
	}
	c.mu.Lock()
	c.rebuildIndexLocked()
	c.mu.Unlock()
	if got := served(); got != second {
		t.Fatalf("after rebuilding the index the clients are served by %s, want %s (pinned)", got, second)
	}
}

func hasEvent(c *Controller, kind, text string) bool {
	for _, e := range c.Events(100) {
		if e.Kind == kind && strings.Contains(e.Message, text) {
			return true
		}
	}
	return false
}
