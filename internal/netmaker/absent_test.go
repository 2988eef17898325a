package netmaker_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
)

// TestRemovedKeysNetmakerNoLongerLists: a pass reports the removed keys
// no host and no pending host has (Report.Absent), so the caller can
// forget their decisions; a host taken out of every network but still
// registered, or a pass that could not read the hosts or the pending
// hosts, reports none.
func TestRemovedKeysNetmakerNoLongerLists(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t, mode.opts)
			first := e.reconcile()
			e.join("web-1", "eu/prod", first)
			e.attest("web-1", "eu/prod")
			e.reconcile()
			if got := e.nm.HostNetworks("web-1"); !cmp.Equal(got, []string{"nm-eu"}) {
				t.Fatalf("web-1 in %v, want nm-eu", got)
			}
			// web-1's node removed from StateMesh; ghost's host never
			// reached Netmaker.
			delete(e.d.Hosts, e.pubKey("web-1"))
			e.d.Removed[e.pubKey("web-1")] = e.clock.Now()
			e.d.Removed[e.pubKey("ghost")] = e.clock.Now()
			rep := e.reconcile()
			if len(e.nm.HostNetworks("web-1")) != 0 {
				t.Fatalf("web-1 still in %v", e.nm.HostNetworks("web-1"))
			}
			if want := []string{e.pubKey("ghost")}; !cmp.Equal(rep.Absent, want) {
				t.Errorf("web-1 taken out but still registered: absent %v, want only ghost's key", rep.Absent)
			}
			// It asks to join again with its key, and its host is
			// deleted: the pending request is still there.
			e.join("web-1", "eu/prod", first)
			e.nm.Do(func(m *nmtest.Model) {
				for id, h := range m.Hosts {
					if h.Name == "web-1" {
						delete(m.Hosts, id) // the pending request stays
					}
				}
			})
			if rep, _ = e.r.Reconcile(context.Background(), e.d); len(rep.Rejected) != 1 || !cmp.Equal(rep.Absent, []string{e.pubKey("ghost")}) {
				t.Errorf("web-1 pending: rejected %v, absent %v, want it rejected and only ghost's key absent", rep.Rejected, rep.Absent)
			}
			// Gone from Netmaker: no host, no pending host.
			want := sorted([]string{e.pubKey("ghost"), e.pubKey("web-1")})
			if rep = e.reconcile(); !cmp.Equal(rep.Absent, want) {
				t.Errorf("absent %v, want %v", rep.Absent, want)
			}
			// A pass that did not read everything says nothing.
			for _, op := range []string{"GET /api/hosts", "GET /api/v1/pending_hosts"} {
				e.nm.Inject(nmtest.Fault{Op: op, Status: 400, Times: 1})
				rep, err := e.r.Reconcile(context.Background(), e.d)
				if err == nil || rep.Absent != nil {
					t.Errorf("%s failed: err %v, absent %v; want an error and none", op, err, rep.Absent)
				}
			}
			e.noViolations()
		})
	}
}
