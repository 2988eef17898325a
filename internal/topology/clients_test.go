package topology

import (
	"slices"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
)

// hasClientPeer reports whether gateway g's full map has the client as a
// peer.
func hasClientPeer(ix *Index, g, client string) bool {
	m, _ := ix.Map(g)
	return slices.ContainsFunc(m.Peers, func(p netmap.Peer) bool { return p.Name == ClientPeerPrefix+client })
}

// resyncs lists the nodes the changes resync.
func resyncs(changes []Change) []string {
	var out []string
	for _, ch := range changes {
		if ch.Resync {
			for _, s := range ch.Audience.Scopes {
				out = append(out, s.Node)
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestPinnedClientsGatewayStaysThroughFlaps: a client's wg-quick file
// names one gateway. While the region's clients gateway is pinned to it,
// health changes of any gateway move nothing (before, a flap of the
// clients gateway, or the return of a gateway rendezvous hashing prefers,
// moved the clients' peers to a gateway their files do not name); asking
// for a configuration while the pinned gateway is unhealthy names a
// healthy one; a pinned gateway that leaves the mesh unpins.
func TestPinnedClientsGatewayStaysThroughFlaps(t *testing.T) {
	w := newWorld(t, 1, 1, 2)
	w.populate(2, 1)
	gws := w.ix.Gateways("r0")
	chosen := w.ix.ClientsGateway("r0")
	other := gws[0]
	if other == chosen {
		other = gws[1]
	}
	c := w.newClient("r0")
	if _, err := w.ix.UpsertClient(c); err != nil {
		t.Fatal(err)
	}
	// Unpinned (as before): rendezvous among the healthy gateways, so a
	// flap of the chosen gateway moves the clients to the other.
	if ch := w.ix.SetHealth(chosen, false); w.ix.ClientsGateway("r0") != other || !slices.Equal(resyncs(ch), slices.Sorted(slices.Values(gws))) {
		t.Fatalf("unpinned: clients gateway %s after %s went unhealthy, resyncs %v", w.ix.ClientsGateway("r0"), chosen, resyncs(ch))
	}
	w.ix.SetHealth(chosen, true)
	// Pinned to the gateway rendezvous hashing does not prefer: the client
	// peer moves there, and the clients range with it.
	ch := w.ix.PinClientsGateway("r0", other)
	if w.ix.ClientsGateway("r0") != other || !hasClientPeer(w.ix, other, c.Name) || hasClientPeer(w.ix, chosen, c.Name) {
		t.Fatalf("pinned to %s: clients gateway %s", other, w.ix.ClientsGateway("r0"))
	}
	if !slices.Equal(resyncs(ch), slices.Sorted(slices.Values(gws))) {
		t.Errorf("pinning resynced %v, want both gateways", resyncs(ch))
	}
	if w.ix.PinClientsGateway("r0", other) != nil {
		t.Error("pinning again changed something")
	}
	// Flaps of either gateway move nothing.
	for _, g := range []string{other, chosen} {
		for _, h := range []bool{false, true} {
			w.ix.SetHealth(g, h)
			if w.ix.ClientsGateway("r0") != other || !hasClientPeer(w.ix, other, c.Name) {
				t.Fatalf("%s healthy=%v: clients gateway %s", g, h, w.ix.ClientsGateway("r0"))
			}
			if !h && g == other {
				// What a configuration request would pin now: the healthy one.
				if got := w.ix.ClientsGatewayToPin("r0"); got != chosen {
					t.Errorf("to pin while %s is unhealthy: %q, want %s", other, got, chosen)
				}
			}
		}
	}
	if got := w.ix.ClientsGatewayToPin("r0"); got != other {
		t.Errorf("to pin while %s is healthy: %q", other, got)
	}
	// No healthy gateway at all: stay.
	w.ix.SetHealth(other, false)
	w.ix.SetHealth(chosen, false)
	if got := w.ix.ClientsGatewayToPin("r0"); got != other {
		t.Errorf("to pin with no healthy gateway: %q, want %s (stay)", got, other)
	}
	w.ix.SetHealth(chosen, true)
	// The pinned gateway leaves the mesh: the other serves.
	w.ix.Remove(other)
	if w.ix.ClientsGateway("r0") != chosen || !hasClientPeer(w.ix, chosen, c.Name) {
		t.Fatalf("after %s left: clients gateway %s", other, w.ix.ClientsGateway("r0"))
	}
	// The nodes route the clients range to the clients gateway.
	for name, n := range w.ix.nodes {
		if n.IsGateway() || !n.active() {
			continue
		}
		m, _ := w.ix.Map(name)
		if via, ok := lookup(m, c.IPv4); !ok || via != chosen {
			t.Errorf("%s routes %s via %q, want %s", name, c.IPv4, via, chosen)
		}
	}
}
