package netmaker_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
	"github.com/statemesh/statemesh/internal/netmap"
)

// Both the server as swagger.yaml describes it and the real one's
// departures from it (wrapped answers, unfiltered pending hosts, the key
// as a JSON object).
var modes = []struct {
	name string
	opts nmtest.Options
}{{"swagger", nmtest.Options{Swagger: true}}, {"real-server", nmtest.Options{}}}

func TestReconcileCreatesTheDesiredState(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t, mode.opts)
			rep := e.reconcile()
			if len(rep.Keys) != 3 {
				t.Errorf("join tokens: %v", rep.Keys)
			}
			e.nm.Do(func(m *nmtest.Model) {
				eu := m.Networks["nm-eu"]
				if eu == nil || eu.AddressRange != "10.201.0.0/16" || eu.DefaultMTU != 1420 || eu.CreatedBy != netmaker.CreatedBy || eu.AutoJoin {
					t.Errorf("nm-eu: %+v", eu)
				}
				var names []string
				for _, k := range m.Keys {
					names = append(names, strings.Join(k.Tags, ","))
					if k.Tags[0] == "sm:eu/prod#0" && !cmp.Equal(k.Groups, []string{"nm-eu.sm-cl-eu--prod", "nm-eu.sm-seg-web"}) {
						t.Errorf("eu/prod key groups %v", k.Groups)
					}
				}
				// Netmaker's own default keys (one per network) are there too.
				if want := []string{"nm-eu", "nm-us", "sm:eu/data#0", "sm:eu/prod#0", "sm:us/prod#0"}; !cmp.Equal(sorted(names), want) {
					t.Errorf("keys %v, want %v", sorted(names), want)
				}
				var acls []string
				for _, a := range m.NetworkACLs("nm-eu") {
					acls = append(acls, a.Name+":"+a.Protocol+":"+strings.Join(a.Ports, ","))
					if a.ID == "nm-eu.all-nodes" && a.Enabled {
						t.Error("Netmaker's default allow-all is still on in StateMesh's network")
					}
				}
				want := []string{"All Gateways:all:", "All Nodes:all:", "statemesh-seg-db:all:", "statemesh-seg-web:all:",
					"statemesh-web-db-icmp:icmp:", "statemesh-web-db-tcp:tcp:5432,6000-6010"}
				if diff := cmp.Diff(want, acls); diff != "" {
					t.Errorf("nm-eu ACL policies (-want +got):\n%s", diff)
				}
				// us has web only: no rule to db there.
				if n := len(m.NetworkACLs("nm-us")); n != 3 {
					t.Errorf("nm-us has %d ACL policies, want the 2 defaults and statemesh-seg-web", n)
				}
			})
			e.noViolations()
		})
	}
}

func TestSecondPassWritesNothing(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t, mode.opts)
			rep := e.reconcile()
			e.join("web-1", "eu/prod", rep)
			e.attest("web-1", "eu/prod")
			e.d.Gateways = []netmaker.GatewaySpec{{Network: "nm-eu", Candidates: []string{e.pubKey("web-1")}}}
			e.reconcile()
			before := e.nm.WriteCount()
			rep = e.reconcile()
			if len(rep.Writes) != 0 || e.nm.WriteCount() != before {
				t.Errorf("the second pass wrote %v (%d calls)", rep.Writes, e.nm.WriteCount()-before)
			}
			t.Logf("a pass with nothing to do: %d calls, %s", rep.Calls, rep.Took.Round(time.Microsecond))
			if rep.Gateways["nm-eu"] != "web-1" || rep.Keys["eu/prod"] == "" {
				t.Errorf("a pass without writes still reports the state: %v %v", rep.Gateways, rep.Keys)
			}
			e.noViolations()
		})
	}
}

func TestAttestedHostIsApproved(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t, mode.opts)
			rep := e.reconcile()
			ids := e.join("web-1", "eu/prod", rep)
			e.attest("web-1", "eu/prod")
			rep = e.reconcile()
			if !cmp.Equal(rep.Approved, ids) {
				t.Fatalf("approved %v, want %v (%+v)", rep.Approved, ids, rep.Decisions)
			}
			if got := e.nm.HostNetworks("web-1"); !cmp.Equal(got, []string{"nm-eu"}) {
				t.Errorf("web-1 is in %v", got)
			}
			e.nm.Do(func(m *nmtest.Model) {
				if got := m.TagsOf("web-1", "nm-eu"); !cmp.Equal(got, []string{"sm-cl-eu--prod", "sm-seg-web"}) {
					t.Errorf("web-1's tags: %v", got)
				}
			})
			e.noViolations()
		})
	}
}

// TestHostJoinsOnlyItsRegionsNetwork: a strong node of one region that
// asks to join another region's network (with that region's key) is
// rejected there.
func TestHostJoinsOnlyItsRegionsNetwork(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	rep := e.reconcile()
	var usCluster string
	for _, k := range e.d.Keys {
		if k.Network == "nm-us" {
			usCluster = k.Region + "/" + k.Cluster
		}
	}
	ids := e.join("web-1", usCluster, rep)
	e.attest("web-1", "eu/prod")
	rep = e.reconcile()
	if !cmp.Equal(rep.Rejected, ids) || len(rep.Approved) != 0 {
		t.Fatalf("eu node asking for nm-us: approved %v rejected %v (%+v)", rep.Approved, rep.Rejected, rep.Decisions)
	}
	if nets := e.nm.HostNetworks("web-1"); len(nets) != 0 {
		t.Errorf("web-1 is in %v", nets)
	}
	e.noViolations()
}

func TestUnattestedHostIsRejected(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t, mode.opts)
			rep := e.reconcile()
			stranger := e.join("stranger", "eu/prod", rep)
			weak := e.join("weak-1", "eu/prod", rep)
			refused := e.join("tampered", "eu/data", rep)
			e.d.Hosts[e.pubKey("weak-1")] = netmaker.Attested{Node: "weak-1", Class: netmap.ClassWeak}
			e.d.Refused[e.pubKey("tampered")] = "PCR 7 does not match the reference"
			var opKey string
			e.nm.Do(func(m *nmtest.Model) { opKey = m.AddKey("ops-laptops", "nm-eu") })
			operators, err := e.nm.Join("laptop", e.pubKey("laptop"), opKey, e.clock.Now())
			if err != nil {
				t.Fatal(err)
			}
			// Weak and refused: at once. Unknown: it waits out the grace.
			rep = e.reconcile()
			if want := sorted(append(weak, refused...)); !cmp.Equal(sorted(rep.Rejected), want) {
				t.Errorf("rejected %v, want %v: %+v", rep.Rejected, want, rep.Decisions)
			}
			pending := e.nm.PendingIDs()
			if !pending[stranger[0]] || !pending[operators[0]] {
				t.Fatalf("decided too early: pending %v", pending)
			}
			e.clock.Add(e.d.Grace + time.Second)
			rep = e.reconcile()
			if !cmp.Equal(rep.Rejected, stranger) {
				t.Errorf("after the grace period rejected %v, want %v", rep.Rejected, stranger)
			}
			// A host that used the operator's own key is the operator's to decide.
			if !e.nm.PendingIDs()[operators[0]] {
				t.Error("a host registered with a key StateMesh did not issue was rejected")
			}
			i := slices.IndexFunc(rep.Decisions, func(d netmaker.Decision) bool { return d.Host == "laptop" })
			if i < 0 || rep.Decisions[i].Action != "leave" {
				t.Errorf("laptop: %+v", rep.Decisions)
			}
			for _, h := range []string{"stranger", "weak-1", "tampered", "laptop"} {
				if nets := e.nm.HostNetworks(h); len(nets) != 0 {
					t.Errorf("%s was admitted to %v", h, nets)
				}
			}
			e.noViolations()
		})
	}
}

func TestQuarantinedNodesHostIsRemoved(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	rep := e.reconcile()
	e.join("web-1", "eu/prod", rep)
	e.join("web-2", "eu/prod", rep)
	e.attest("web-1", "eu/prod")
	e.attest("web-2", "eu/prod")
	e.reconcile()
	// web-1 is also in a network of the operator's, and in nm-us.
	e.nm.Do(func(m *nmtest.Model) { m.AddNetwork("ops", "10.99.0.0/16", false) })
	e.nm.AddMember("web-1", e.pubKey("web-1"), "ops")
	e.nm.AddMember("web-1", e.pubKey("web-1"), "nm-us")
	// The desired-state change: quarantined now (real clock: the delay
	// measured is the pass's own).
	e.r.Now = time.Now
	changed := time.Now()
	e.d.Removed[e.pubKey("web-1")] = changed
	rep, err := e.r.Reconcile(context.Background(), e.d)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(changed)
	if got := e.nm.HostNetworks("web-1"); !cmp.Equal(got, []string{"ops"}) {
		t.Errorf("web-1 is still in %v; want only the operator's ops", got)
	}
	if got := e.nm.HostNetworks("web-2"); !cmp.Equal(got, []string{"nm-eu"}) {
		t.Errorf("web-2 was touched: %v", got)
	}
	since, ok := rep.Removed["web-1"]
	if !ok || len(rep.Removals) != 2 || since <= 0 || since > took {
		t.Errorf("removal delay not reported: %v, %+v (pass took %s)", rep.Removed, rep.Removals, took)
	}
	t.Logf("quarantine → removed from 2 networks: %s measured by the reconciler, %s by the test, %d calls", since.Round(time.Microsecond), took.Round(time.Microsecond), rep.Calls)
	// And it cannot come back in while quarantined.
	ids, _ := e.nm.Join("web-1", e.pubKey("web-1"), rep.Keys["eu/prod"].Reveal(), time.Now())
	rep = e.reconcile()
	if !cmp.Equal(rep.Rejected, ids) || len(e.nm.HostNetworks("web-1")) != 1 {
		t.Errorf("a quarantined host's new request: rejected %v, want %v", rep.Rejected, ids)
	}
	e.noViolations()
}

func TestACLsFollowAPolicyChange(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	rep := e.reconcile()
	e.join("web-1", "eu/prod", rep)
	e.join("db-1", "eu/data", rep)
	e.attest("web-1", "eu/prod")
	e.attest("db-1", "eu/data")
	e.converged()
	ids := map[string]string{}
	e.nm.Do(func(m *nmtest.Model) {
		for _, a := range m.NetworkACLs("nm-eu") {
			ids[a.Name] = a.ID
		}
	})
	// New ports, icmp dropped, a segment for the data cluster's ops, and
	// db now also holds eu/prod.
	e.setPolicy(`
segments:
  - {name: web, match: {clusters: [eu/prod, us/prod]}}
  - {name: db, match: {clusters: [eu/data, eu/prod]}}
  - {name: ops, match: {clusters: [eu/data]}, isolated: true}
rules:
  - {name: web-db, from: web, to: db, ports: ["tcp/5433"]}
  - {name: ops-web, from: ops, to: web, ports: [any]}
`)
	e.converged()
	var got []string
	e.nm.Do(func(m *nmtest.Model) {
		for _, a := range m.NetworkACLs("nm-eu") {
			if strings.HasPrefix(a.Name, netmaker.ACLPrefix) {
				got = append(got, a.Name+":"+a.Protocol+":"+strings.Join(a.Ports, ","))
			}
			if a.Name == "statemesh-web-db-tcp" && a.ID != ids[a.Name] {
				t.Error("the changed policy was re-created instead of updated in place")
			}
		}
		if tags := m.TagsOf("web-1", "nm-eu"); !cmp.Equal(tags, []string{"sm-cl-eu--prod", "sm-seg-db", "sm-seg-web"}) {
			t.Errorf("web-1 did not follow its cluster into db: %v", tags)
		}
		if tags := m.TagsOf("db-1", "nm-eu"); !cmp.Equal(tags, []string{"sm-cl-eu--data", "sm-seg-db", "sm-seg-ops"}) {
			t.Errorf("db-1's tags: %v", tags)
		}
		// Hosts joining from now on get the new tags from the key.
		for _, k := range m.Keys {
			if k.Tags[0] == "sm:eu/prod#0" && !cmp.Equal(k.Groups, []string{"nm-eu.sm-cl-eu--prod", "nm-eu.sm-seg-db", "nm-eu.sm-seg-web"}) {
				t.Errorf("eu/prod's key still gives %v", k.Groups)
			}
		}
	})
	// ops is isolated: no statemesh-seg-ops.
	want := []string{"statemesh-ops-web-all:all:", "statemesh-seg-db:all:", "statemesh-seg-web:all:", "statemesh-web-db-tcp:tcp:5433"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ACL policies after the change (-want +got):\n%s", diff)
	}
	// No policy at all: one allow-all per network, segment tags gone.
	e.setPolicy("")
	e.converged()
	e.nm.Do(func(m *nmtest.Model) {
		var names []string
		for _, a := range m.NetworkACLs("nm-eu") {
			names = append(names, a.Name)
		}
		if !cmp.Equal(names, []string{"All Gateways", "All Nodes", "statemesh-allow-all"}) {
			t.Errorf("ACL policies without a policy: %v", names)
		}
		if _, ok := m.Tags["nm-eu.sm-seg-web"]; ok {
			t.Error("an unused segment tag was kept")
		}
	})
	e.noViolations()
}

func TestFailingNetmakerDoesNotWedge(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	e.converged()
	ctx := context.Background()
	attempts := e.c.Retries + 1
	// The bound on a pass against a dead server: one call's attempts
	// (timeouts) and backoffs; the pass stops at the first unavailable call.
	bound := time.Duration(attempts)*300*time.Millisecond + time.Duration(attempts)*40*time.Millisecond + 500*time.Millisecond
	for _, tc := range []struct {
		name   string
		break_ func()
	}{
		{"500s", func() { e.nm.Inject(nmtest.Fault{Status: 500}) }},
		{"timeouts", func() { e.nm.Inject(nmtest.Fault{Delay: 2 * time.Second}) }},
		{"down", func() { e.nm.Down() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.break_()
			calls := len(e.nm.Calls())
			start := time.Now()
			rep, err := e.r.Reconcile(ctx, e.d)
			took := time.Since(start)
			if !errors.Is(err, netmaker.ErrUnavailable) {
				t.Fatalf("want ErrUnavailable, got %v", err)
			}
			if took > bound {
				t.Errorf("a failing server held the pass for %s (bound %s)", took, bound)
			}
			if tc.name != "down" {
				if n := len(e.nm.Calls()) - calls; n != attempts {
					t.Errorf("%d calls reached the server, want %d (one call, retried, then the pass stops)", n, attempts)
				}
			}
			if strings.Contains(err.Error(), e.nm.Token) {
				t.Error("the token is in the error")
			}
			t.Logf("%s: pass gave up after %s, %d attempts: %v", tc.name, took.Round(time.Millisecond), rep.Calls, err)
			// Recovered: the next pass converges.
			e.nm.Fail(0, 0)
			if tc.name == "down" {
				e.nm.Up()
			}
			e.converged()
		})
	}
	t.Run("transient 503s are ridden out", func(t *testing.T) {
		e.nm.Inject(nmtest.Fault{Status: 503, Times: 2})
		rep, err := e.r.Reconcile(ctx, e.d)
		if err != nil || len(rep.Writes) != 0 {
			t.Errorf("two 503s: %v %v", err, rep.Writes)
		}
	})
	t.Run("restart keeping state", func(t *testing.T) {
		e.nm.Restart(true)
		if rep := e.reconcile(); len(rep.Writes) != 0 {
			t.Errorf("after a restart that kept its state: %v", rep.Writes)
		}
	})
	t.Run("restart losing state", func(t *testing.T) {
		e.nm.Restart(false)
		rep := e.reconcile()
		if !slices.Contains(rep.Writes, "create network nm-eu (10.201.0.0/16, MTU 1420)") || len(rep.Keys) != 3 {
			t.Errorf("after a restart that lost its state: %v", rep.Writes)
		}
		e.converged()
	})
	e.noViolations()
}

// A change the server made but whose answer was lost (500 after commit)
// is retried; what that duplicates is cleaned up by the next pass.
func TestLostAnswersConverge(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	e.nm.Inject(nmtest.Fault{Op: "POST /api/v1/acls", Status: 500, AfterApply: true, Times: 1})
	e.nm.Inject(nmtest.Fault{Op: "POST /api/v1/enrollment-keys", Status: 502, AfterApply: true, Times: 1})
	rep, err := e.r.Reconcile(context.Background(), e.d)
	t.Logf("first pass: %v", err)
	e.converged()
	e.nm.Do(func(m *nmtest.Model) {
		seen := map[string]int{}
		for _, a := range m.ACLs {
			seen[a.NetworkID+"/"+a.Name]++
		}
		for _, k := range m.Keys {
			seen["key "+k.Tags[0]]++
		}
		for k, n := range seen {
			if n > 1 {
				t.Errorf("%s exists %d times", k, n)
			}
		}
	})
	_ = rep
	e.noViolations()
}

func TestUnmarkedObjectsSurvive(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	var opACL string
	e.nm.Do(func(m *nmtest.Model) {
		m.AddNetwork("theirs", "10.50.0.0/16", false)
		m.AddNetwork("nm-us", "10.202.0.0/16", false) // same name as one StateMesh wants
		m.AddKey("ops-key", "theirs")
		m.AddKey("sm-looks-like-ours", "theirs") // sm- is the tag prefix, not the key's
		m.AddTag("theirs", "sm-seg-web")         // StateMesh-like name in a network it does not manage
		m.AddTag("nm-us", "team-a")
		opACL = m.AddACL(nmtest.ACL{Name: "statemesh-lookalike", MetaData: "mine", NetworkID: "nm-us", PolicyType: "device-policy",
			Src: []nmtest.ACLTag{{ID: "tag", Value: "*"}}, Dst: []nmtest.ACLTag{{ID: "tag", Value: "*"}}, Protocol: "all", ServiceType: "Any", Enabled: true})
	})
	e.nm.AddMember("legacy", e.pubKey("legacy"), "nm-us")
	e.nm.AddMember("gw-op", e.pubKey("gw-op"), "theirs")
	e.nm.Do(func(m *nmtest.Model) {
		n := m.NodeOf("gw-op", "theirs")
		n.IsGw, n.Metadata = true, "operator's gateway"
	})
	unmarked := func(kind, id string) bool {
		switch kind {
		case "network":
			return id != "nm-eu"
		case "key":
			return true // compared below by name
		case "acl":
			return strings.HasPrefix(id, "nm-us.") || strings.HasPrefix(id, "theirs.") || id == opACL
		case "tag":
			return !strings.Contains(id, ".sm-") || strings.HasPrefix(id, "theirs.")
		}
		return kind == "host" || (kind == "node" && id != "")
	}
	before := e.snapshot(unmarked)
	rep := e.reconcile()
	if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, "nm-us was not created by StateMesh") }) {
		t.Errorf("the operator's nm-us is not reported as used as it is: %v", rep.Notes)
	}
	if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, "nm-us: policy in a network StateMesh did not create") }) {
		t.Errorf("the approximation in the operator's network is not reported: %v", rep.Notes)
	}
	// Drop everything StateMesh wanted, then detach.
	e.d = netmaker.Desired{}
	e.reconcile()
	if _, err := e.r.Detach(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := e.snapshot(unmarked)
	for k, v := range before {
		if strings.HasPrefix(k, "key ") || strings.HasPrefix(k, "network nm-us") {
			continue
		}
		if after[k] != v {
			t.Errorf("%s changed:\n before %s\n after  %s", k, v, after[k])
		}
	}
	e.nm.Do(func(m *nmtest.Model) {
		var names []string
		for _, k := range m.Keys {
			names = append(names, k.Tags[0])
		}
		if want := []string{"nm-us", "ops-key", "sm-looks-like-ours", "theirs"}; !cmp.Equal(sorted(names), want) {
			t.Errorf("keys left: %v, want %v", sorted(names), want)
		}
		if n := m.Networks["nm-us"]; n == nil || n.CreatedBy != "admin" {
			t.Errorf("the operator's nm-us: %+v", n)
		}
		if m.Networks["nm-eu"] != nil {
			t.Error("StateMesh's empty nm-eu was not deleted")
		}
	})
	e.noViolations()
}

func TestDetachDeletesOnlyWhatStateMeshCreated(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	rep := e.reconcile()
	e.join("web-1", "eu/prod", rep)
	e.attest("web-1", "eu/prod")
	e.d.Gateways = []netmaker.GatewaySpec{{Network: "nm-eu", Candidates: []string{e.pubKey("web-1")}}}
	e.converged()
	rep, err := e.r.Detach(context.Background())
	// nm-eu still has web-1: kept, with Netmaker's default policy on again.
	if err == nil || !strings.Contains(err.Error(), "network nm-eu kept") {
		t.Errorf("detach with a host left: %v", err)
	}
	t.Logf("detach: %d changes, %d calls", len(rep.Writes), rep.Calls)
	e.nm.Do(func(m *nmtest.Model) {
		if m.Networks["nm-us"] != nil || m.Networks["nm-eu"] == nil {
			t.Errorf("networks left: %v", m.Networks)
		}
		for id, a := range m.ACLs {
			if !a.Default {
				t.Errorf("ACL policy %s left", id)
			}
			if a.ID == "nm-eu.all-nodes" && !a.Enabled {
				t.Error("Netmaker's default allow-all was not turned back on")
			}
		}
		for id := range m.Tags {
			if strings.Contains(id, ".sm-") {
				t.Errorf("tag %s left", id)
			}
		}
		for _, k := range m.Keys {
			if strings.HasPrefix(k.Tags[0], netmaker.KeyPrefix) {
				t.Errorf("key %s left", k.Tags[0])
			}
		}
		if n := m.NodeOf("web-1", "nm-eu"); n == nil || n.IsGw {
			t.Errorf("web-1: %+v (want a member without the gateway role)", n)
		}
	})
	// The host out: a second detach removes the network.
	e.nm.Do(func(m *nmtest.Model) { delete(m.Nodes, m.NodeOf("web-1", "nm-eu").ID) })
	if _, err := e.r.Detach(context.Background()); err != nil {
		t.Errorf("second detach: %v", err)
	}
	e.nm.Do(func(m *nmtest.Model) {
		if len(m.Networks) != 0 {
			t.Errorf("networks left: %v", m.Networks)
		}
	})
	e.noViolations()
}

func TestKeysRotateAndAreRevoked(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	rep := e.reconcile()
	old := rep.Keys["eu/prod"].Reveal()
	e.d.Keys[0].Generation = 1 // eu/prod
	rep = e.reconcile()
	created := slices.Index(rep.Writes, "create enrollment key sm:eu/prod#1 for cluster eu/prod in nm-eu")
	revoked := slices.Index(rep.Writes, "revoke enrollment key sm:eu/prod#0 of eu/prod (replaced by sm:eu/prod#1)")
	if created < 0 || revoked < created {
		t.Errorf("rotation: want the new key created, then the old revoked: %v", rep.Writes)
	}
	if _, err := e.nm.Join("late", e.pubKey("late"), old, e.clock.Now()); err == nil {
		t.Error("the rotated-out key still works")
	}
	// A TTL: renewed when less than a fifth is left.
	e.d.Keys[1].TTL = time.Hour // eu/data
	rep = e.reconcile()
	if !slices.Contains(rep.Writes, "create enrollment key sm:eu/data#0 for cluster eu/data in nm-eu") {
		t.Errorf("an unlimited key was not replaced by one with a TTL: %v", rep.Writes)
	}
	e.clock.Add(40 * time.Minute)
	if rep = e.reconcile(); len(rep.Writes) != 0 {
		t.Errorf("renewed with 20 of 60 minutes left: %v", rep.Writes)
	}
	e.clock.Add(10 * time.Minute)
	if rep = e.reconcile(); !slices.Contains(rep.Writes, "create enrollment key sm:eu/data#0 for cluster eu/data in nm-eu") {
		t.Errorf("not renewed with 10 of 60 minutes left: %v", rep.Writes)
	}
	// The cluster is gone: its key is revoked.
	e.d.Keys = slices.Delete(e.d.Keys, 1, 2)
	rep = e.reconcile()
	if !slices.Contains(rep.Writes, "revoke enrollment key sm:eu/data#0 (its cluster is gone)") {
		t.Errorf("a gone cluster's key: %v", rep.Writes)
	}
	e.converged()
	e.noViolations()
}

func TestGatewayFailsOver(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	rep := e.reconcile()
	for _, h := range []string{"gw-a", "gw-b", "web-1", "web-2"} {
		e.join(h, "eu/prod", rep)
		e.attest(h, "eu/prod")
	}
	e.d.Gateways = []netmaker.GatewaySpec{{Network: "nm-eu", Candidates: []string{e.pubKey("gw-a"), e.pubKey("gw-b")},
		Relayed: []string{e.pubKey("web-1"), e.pubKey("web-2")}}}
	e.converged()
	relayedBy := func() (string, string) {
		var gw, relay string
		e.nm.Do(func(m *nmtest.Model) {
			for _, h := range []string{"gw-a", "gw-b"} {
				if n := m.NodeOf(h, "nm-eu"); n.IsGw {
					gw += h
				}
			}
			if r := m.Nodes[m.NodeOf("web-1", "nm-eu").RelayedBy]; r != nil {
				relay = m.Hosts[r.HostID].Name
			}
		})
		return gw, relay
	}
	if gw, relay := relayedBy(); gw != "gw-a" || relay != "gw-a" {
		t.Fatalf("gateway %q, web-1 relayed by %q; want gw-a", gw, relay)
	}
	// gw-a is unhealthy: the caller drops it; gw-b takes over.
	e.d.Gateways[0].Candidates = e.d.Gateways[0].Candidates[1:]
	e.converged()
	if gw, relay := relayedBy(); gw != "gw-b" || relay != "gw-b" {
		t.Errorf("after failover: gateway %q, web-1 relayed by %q; want gw-b", gw, relay)
	}
	// No gateway wanted any more: the role is taken off.
	e.d.Gateways = nil
	e.converged()
	if gw, relay := relayedBy(); gw != "" || relay != "" {
		t.Errorf("no gateway wanted: gateway %q, relay %q", gw, relay)
	}
	e.noViolations()
}

func TestDriftNetmakerCannotFixIsReported(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	e.converged()
	e.d.Networks[0].AddressRange = "10.210.0.0/16"
	e.nm.Do(func(m *nmtest.Model) { m.Networks["nm-eu"].AutoJoin = true })
	rep, err := e.r.Reconcile(context.Background(), e.d)
	if !errors.Is(err, netmaker.ErrDrift) || !strings.Contains(err.Error(), "network nm-eu has 10.201.0.0/16") {
		t.Errorf("want the drift reported, got %v", err)
	}
	if !cmp.Equal(rep.Writes, []string{"hold new hosts for approval in network nm-eu (auto_join off)"}) {
		t.Errorf("writes: %v", rep.Writes)
	}
	e.nm.Do(func(m *nmtest.Model) {
		if n := m.Networks["nm-eu"]; n.AddressRange != "10.201.0.0/16" || n.AutoJoin {
			t.Errorf("nm-eu: %+v", n)
		}
	})
	e.noViolations()
}

func TestServerWithoutGatingOrTags(t *testing.T) {
	t.Run("device approval off", func(t *testing.T) {
		e := newEnv(t, nmtest.Options{NoDeviceApproval: true})
		rep, err := e.r.Reconcile(context.Background(), e.d)
		if err != nil || !rep.Ungated {
			t.Errorf("want a pass without errors that reports the server ungated, got %v (ungated %v)", err, rep.Ungated)
		}
	})
	t.Run("community edition without a policy", func(t *testing.T) {
		// Nothing needs tags: the passes are clean, the server ungated.
		e := newEnv(t, nmtest.Options{CE: true})
		e.setPolicy("")
		rep := e.reconcile()
		if !rep.Ungated {
			t.Error("not reported ungated")
		}
		e.converged()
	})
	t.Run("community server", func(t *testing.T) {
		e := newEnv(t, nmtest.Options{NoPro: true})
		rep, err := e.r.Reconcile(context.Background(), e.d)
		if err == nil || !strings.Contains(err.Error(), "Netmaker Pro") {
			t.Errorf("want the missing tags API named, got %v", err)
		}
		// Admission still works.
		e.join("web-1", "eu/prod", rep)
		e.attest("web-1", "eu/prod")
		e.r.Reconcile(context.Background(), e.d)
		if got := e.nm.HostNetworks("web-1"); len(got) != 1 {
			t.Errorf("web-1 not admitted without tags: %v", got)
		}
	})
}

// TestCapitalisedEnvelopeIsRead: the real server wraps pending hosts, ACLs,
// tags and feature flags in models.SuccessResponse, whose fields have no
// json tags ({"Code":…,"Message":…,"Response":…}). Issue 17, item 1: the
// client read only a lowercase "response", every pass failed to decode
// the pending hosts and ACLs, and device approval read as off.
func TestCapitalisedEnvelopeIsRead(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	ff, err := e.c.FeatureFlags(context.Background())
	if err != nil || !ff.DeviceApproval {
		t.Errorf("feature flags: %+v, %v (device approval is on)", ff, err)
	}
	rep := e.reconcile() // fails on any decoding error
	if rep.Ungated {
		t.Error("a server with device approval on reported as ungated")
	}
	ids := e.join("web-1", "eu/prod", rep)
	e.join("stranger", "eu/prod", rep)
	e.attest("web-1", "eu/prod")
	rep = e.reconcile()
	if !cmp.Equal(rep.Approved, ids) {
		t.Errorf("approved %v, want %v", rep.Approved, ids)
	}
	acls, err := e.c.ACLs(context.Background(), "nm-eu")
	if err != nil || len(acls) == 0 {
		t.Errorf("ACLs: %d, %v", len(acls), err)
	}
	e.noViolations()
}

// TestCommunityEdition: without device approval the server forces
// auto_join on and hosts join at once. Issue 17, item 2: StateMesh asked
// for auto_join off on every pass (each write makes Netmaker push a peer
// update to every host); zero trust must hold by removal instead: an
// unattested host that joined with a StateMesh key is removed within one
// pass and reported, an attested one stays. Item 4: the policies cannot be
// created there (no tags), so the allow-all default stays on.
func TestCommunityEdition(t *testing.T) {
	e := newEnv(t, nmtest.Options{CE: true})
	ctx := context.Background()
	rep, _ := e.r.Reconcile(ctx, e.d)
	if len(rep.Keys) != 3 {
		t.Fatalf("keys: %v", rep.Keys)
	}
	putsBefore := 0
	for _, c := range e.nm.Calls() {
		if c.Method == "PUT" && strings.HasPrefix(c.Path, "/api/networks/") {
			putsBefore++
		}
	}
	for range 5 {
		e.r.Reconcile(ctx, e.d)
	}
	puts := 0
	for _, c := range e.nm.Calls() {
		if c.Method == "PUT" && strings.HasPrefix(c.Path, "/api/networks/") {
			puts++
		}
	}
	if puts != 0 {
		t.Errorf("%d network updates (auto_join) on a server that forces it on; want none", puts)
	}
	e.attest("web-1", "eu/prod")
	e.join("web-1", "eu/prod", rep)
	e.join("intruder", "eu/prod", rep)
	if got := e.nm.HostNetworks("intruder"); len(got) != 1 {
		t.Fatalf("the CE fake did not let the host join at once: %v", got)
	}
	rep, _ = e.r.Reconcile(ctx, e.d)
	if got := e.nm.HostNetworks("intruder"); len(got) != 0 {
		t.Errorf("an unattested host that joined with StateMesh's key is still in %v after a pass", got)
	}
	if got := e.nm.HostNetworks("web-1"); len(got) != 1 {
		t.Errorf("the attested host was removed: in %v", got)
	}
	var removed []string
	for _, r := range rep.Removals {
		if r.Unattested {
			removed = append(removed, r.Host+" "+r.Network)
		}
	}
	if !cmp.Equal(removed, []string{"intruder nm-eu"}) || !rep.Ungated {
		t.Errorf("removals reported: %v (ungated %v)", removed, rep.Ungated)
	}
	e.nm.Do(func(m *nmtest.Model) {
		for _, a := range m.NetworkACLs("nm-eu") {
			if a.Default && a.Name == "All Nodes" && !a.Enabled {
				t.Error("the allow-all default was disabled though StateMesh's policies could not be created: the network denies everything")
			}
		}
	})
	e.noViolations()
}

// TestDefaultPolicyStaysUntilTheReplacementIsInPlace: issue 17, item 4.
func TestDefaultPolicyStaysUntilTheReplacementIsInPlace(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	e.nm.Inject(nmtest.Fault{Op: "POST /api/v1/acls", Status: 400, Times: 1})
	_, err := e.r.Reconcile(context.Background(), e.d)
	if err == nil {
		t.Fatal("a failed ACL creation was not reported")
	}
	allowAll := func() bool {
		on := false
		e.nm.Do(func(m *nmtest.Model) {
			for _, a := range m.NetworkACLs("nm-eu") {
				if a.Default && a.Name == "All Nodes" {
					on = a.Enabled
				}
			}
		})
		return on
	}
	if !allowAll() {
		t.Error("the allow-all default of nm-eu was disabled though one of StateMesh's policies failed to be created")
	}
	e.converged()
	if allowAll() {
		t.Error("the allow-all default stays on once StateMesh's policies are all there")
	}
	e.noViolations()
}

// TestMasterKeyCannotWritePolicy: the server looks up the calling user to
// create ACL policies and tags, and the master key's user is not in its
// database (issue 17, item 3). The error says which credential to give,
// admission goes on, and the allow-all default stays on.
func TestMasterKeyCannotWritePolicy(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	c, err := netmaker.NewClient(e.nm.URL, nmtest.MasterKey, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !netmaker.IsMasterKey(nmtest.MasterKey) || netmaker.IsMasterKey(nmtest.AccessToken) {
		t.Error("IsMasterKey cannot tell the master key from an access token")
	}
	e.r.C = c
	rep, err := e.r.Reconcile(context.Background(), e.d)
	if !errors.Is(err, netmaker.ErrCredential) || !strings.Contains(err.Error(), "super-admin") {
		t.Errorf("want ErrCredential naming the token to give, got %v", err)
	}
	if len(rep.Keys) != 3 {
		t.Errorf("keys: %v (admission goes on)", rep.Keys)
	}
	e.nm.Do(func(m *nmtest.Model) {
		for _, a := range m.NetworkACLs("nm-eu") {
			if a.Default && a.Name == "All Nodes" && !a.Enabled {
				t.Error("the allow-all default was disabled without StateMesh's policies")
			}
		}
	})
	e.noViolations()
}

func TestInvalidDesiredStateIsRefusedBeforeAnyCall(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	e.d.Networks = append(e.d.Networks, netmaker.NetworkSpec{Name: "Bad Name", AddressRange: "10.9.0.0/32"})
	e.d.ACLs = append(e.d.ACLs, netmaker.ACL{Name: "unmarked", NetworkID: "nm-eu"})
	_, err := e.r.Reconcile(context.Background(), e.d)
	for _, want := range []string{`name "Bad Name"`, `address range "10.9.0.0/32"`, "acls[", "MapPolicy makes them"} {
		if !errors.Is(err, netmaker.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	if n := len(e.nm.Calls()); n != 0 {
		t.Errorf("%d calls made for an invalid desired state", n)
	}
}

// The controller's short form (key → node name) admits as strong, and
// segment membership comes from the cluster tag the key gave the host.
func TestShortFormAttested(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	rep := e.reconcile()
	e.join("web-1", "eu/prod", rep)
	e.d.Attested = map[string]string{e.pubKey("web-1"): "web-1"}
	e.setPolicy(`
segments:
  - {name: web, match: {clusters: [eu/prod]}}
  - {name: all, match: {regions: [eu]}}
`)
	e.converged()
	e.nm.Do(func(m *nmtest.Model) {
		if tags := m.TagsOf("web-1", "nm-eu"); !cmp.Equal(tags, []string{"sm-cl-eu--prod", "sm-seg-all", "sm-seg-web"}) {
			t.Errorf("web-1's tags: %v", tags)
		}
	})
	e.noViolations()
}
