package netmakersync

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/topology"
)

// TestNetmakerDecisionsAreForgotten: a removal decision is kept while it
// can matter (the node is in the registry, quarantined; or Netmaker still
// lists a host with its key) and forgotten, in memory and in the store,
// once the node has left the registry and Netmaker lists no host or
// pending host with its key. They were kept forever: seen never shrank,
// so saveState never deleted a netmaker/hosts/ key.
func TestNetmakerDecisionsAreForgotten(t *testing.T) {
	nm := nmtest.Start(t)
	cl, err := netmaker.NewClient(nm.URL, nm.Token, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s, reg := newSync(t, Config{Client: cl})
	ctx := context.Background()
	r := &netmaker.Reconciler{C: cl}
	key := func() netmap.Key { k, _ := netmap.GeneratePrivateKey(); return k.PublicKey() }
	a := controller.BackendNode{Name: "host-a", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key()}
	b := controller.BackendNode{Name: "host-b", Region: "eu-central", Cluster: "prod", Role: netmap.RoleHost, Class: netmap.ClassStrong, State: topology.StateActive, PublicKey: key()}
	reg.set(a, b)
	st, err := s.loadState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.pass(ctx, r, st, time.Second) // creates nm-eu
	nm.AddMember("host-a", a.PublicKey.String(), "nm-eu")
	nm.AddMember("host-b", b.PublicKey.String(), "nm-eu")
	pass := func() {
		t.Helper()
		s.pass(ctx, r, st, time.Second)
		if e := st.status.Error; e != "" {
			t.Fatalf("pass: %s", e)
		}
	}
	// stored lists the nodes whose decisions the store holds, as a
	// restarted controller reads them.
	stored := func() []string {
		t.Helper()
		re, err := s.loadState(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var nodes []string
		for _, n := range re.seen {
			nodes = append(nodes, n)
		}
		slices.Sort(nodes)
		return nodes
	}
	pass()
	if got := stored(); !slices.Equal(got, []string{"host-a", "host-b"}) {
		t.Fatalf("stored decisions %v, want both hosts", got)
	}

	// host-a removed from the registry, host-b quarantined: both taken
	// out of nm-eu, both decisions kept (their hosts are still listed).
	qb := b
	qb.State = topology.StateQuarantined
	reg.set(qb)
	pass()
	pass()
	if n := len(nm.HostNetworks("host-a")) + len(nm.HostNetworks("host-b")); n != 0 {
		t.Fatalf("hosts still in %d networks", n)
	}
	if got := stored(); !slices.Equal(got, []string{"host-a", "host-b"}) {
		t.Errorf("hosts still listed in Netmaker: stored decisions %v, want both", got)
	}

	// Both hosts deleted in Netmaker: host-a's decision can no longer
	// matter and goes; host-b's node is still in the registry (it may
	// come back), so its decision stays.
	nm.Do(func(m *nmtest.Model) {
		for id := range m.Hosts {
			delete(m.Hosts, id)
		}
	})
	pass() // finds both keys absent
	pass() // forgets host-a's decision
	if got := stored(); !slices.Equal(got, []string{"host-b"}) {
		t.Errorf("stored decisions %v, want host-b's alone", got)
	}
	if _, ok := st.seen[a.PublicKey.String()]; ok || len(st.saved) != 1 {
		t.Errorf("in memory: seen %v, saved %d; want host-a forgotten", st.seen, len(st.saved))
	}

	// host-a's netclient registers again (its node is gone): never
	// admitted.
	nm.Register("host-a", a.PublicKey.String(), "nm-eu", time.Now())
	pass()
	if got := nm.HostNetworks("host-a"); len(got) != 0 {
		t.Errorf("host-a is back in %v", got)
	}
	if len(nm.Violations) != 0 {
		t.Errorf("contract violations: %v", nm.Violations)
	}
}
