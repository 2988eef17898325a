package server_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/ctltest"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
	etcdstore "github.com/statemesh/statemesh/internal/store/etcd"
	"github.com/statemesh/statemesh/internal/store/etcd/etcdtest"
)

// A single controller replica restarts (issue 21, item 3): its agents
// resume from the revision of their map, and the replica, which has no
// history yet, answers from the persisted map revisions (controller
// maprev.go): "current" when nothing their map depends on changed since,
// a snapshot otherwise.

// restartAgent is a node following its map over restarts of the replica,
// folding frames into its map as the agent does.
type restartAgent struct {
	name string
	id   *apiclient.Identity
	// base is the map held when the current stream opened; f its frames.
	base netmap.Map
	f    *frames
}

// current is the agent's map: base with every frame applied.
func (a *restartAgent) current() netmap.Map {
	m := a.base
	for _, fr := range a.f.all() {
		switch fr.Type {
		case api.FrameSnapshot:
			m = fr.Map.Normalize()
		case api.FrameDelta:
			if fr.Revision >= m.Revision {
				m = m.Apply(*fr.Delta)
			}
		}
	}
	return m
}

// count returns how many frames of type typ the current stream received.
func (a *restartAgent) count(typ string) int {
	n := 0
	for _, fr := range a.f.all() {
		if fr.Type == typ {
			n++
		}
	}
	return n
}

type restartFixture struct {
	t      *testing.T
	ctx    context.Context
	st     store.Store
	cfg    controller.Config
	inst   *ctltest.Instance
	agents []*restartAgent
	// url is the running replica's, for the gateways' heartbeats.
	url atomic.Pointer[string]
}

func smallSpec(t *testing.T) []byte {
	t.Helper()
	spec, err := os.ReadFile("../../examples/small.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// newRestartFixture starts a replica on st with examples/small.yaml, and
// enrolls two healthy gateways (one per region) and nodes in every
// cluster, each following its map.
func newRestartFixture(t *testing.T, st store.Store) *restartFixture {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// A gateway is marked down after 6 s without a heartbeat (sent every
	// 200 ms): a loaded machine must not flip its health, which would move
	// the markers; a heartbeat is still written every 2 s.
	x := &restartFixture{t: t, ctx: ctx, st: st, cfg: controller.Config{HeartbeatTimeout: 6 * time.Second}}
	x.start(smallSpec(t))
	var gws []*apiclient.Identity
	for _, gw := range []struct{ name, region string }{{"gw-eu", "eu-central"}, {"gw-us", "us-east"}} {
		gws = append(gws, x.enroll(api.CreateTokenRequest{Region: gw.region, Role: "gateway"}, gw.name, "gateway").id)
	}
	go x.heartbeats(gws)
	x.waitHealthy("gw-eu", "gw-us")
	for _, n := range []struct{ name, cluster string }{
		{"p0", "eu-central/prod"}, {"p1", "eu-central/prod"}, {"p2", "eu-central/prod"},
		{"s0", "eu-central/staging"}, {"s1", "eu-central/staging"},
		{"u0", "us-east/prod"}, {"u1", "us-east/prod"},
	} {
		x.enroll(api.CreateTokenRequest{Cluster: n.cluster}, n.name, "node")
	}
	for _, a := range x.agents {
		x.open(a, 0)
	}
	x.waitConverged("initial streams")
	return x
}

func (x *restartFixture) start(spec []byte) {
	x.inst = ctltest.Start(x.t, ctltest.Options{Store: x.st, Spec: spec, Config: x.cfg})
	x.url.Store(&x.inst.URL)
}

func (x *restartFixture) enroll(req api.CreateTokenRequest, name, role string) *restartAgent {
	x.t.Helper()
	k, _ := netmap.GeneratePrivateKey()
	id, err := apiclient.Enroll(x.ctx, x.inst.URL, x.inst.Token(x.t, req), api.EnrollRequest{Name: name, Role: role, PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"})
	if err != nil {
		x.t.Fatalf("enrolling %s: %v", name, err)
	}
	a := &restartAgent{name: name, id: id}
	x.agents = append(x.agents, a)
	return a
}

// at returns a's identity pointed at the running replica.
func (x *restartFixture) at(a *restartAgent) *apiclient.Identity {
	id := *a.id
	id.Server = x.inst.URL
	return &id
}

// open (re)opens a's stream from revision from, keeping its map.
func (x *restartFixture) open(a *restartAgent, from int64) {
	if a.f != nil {
		a.base = a.current()
	}
	a.f = stream(x.t, x.ctx, x.at(a), from)
}

// heartbeats keeps the gateways healthy on whichever replica runs.
func (x *restartFixture) heartbeats(gws []*apiclient.Identity) {
	for x.ctx.Err() == nil {
		for _, gw := range gws {
			id := *gw
			id.Server = *x.url.Load()
			if c, err := id.Client(); err == nil {
				c.ReportStatus(x.ctx, api.StatusReport{Healthy: true})
			}
		}
		select {
		case <-x.ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (x *restartFixture) waitHealthy(names ...string) {
	x.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, name := range names {
		for {
			kv, err := x.st.Get(x.ctx, "health/"+name)
			if err == nil && strings.Contains(string(kv.Value), `"healthy":true`) {
				break
			}
			if time.Now().After(deadline) {
				x.t.Fatalf("gateway %s not healthy: %v", name, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// waitConverged waits until every agent's map is the one the running
// replica would send it now.
func (x *restartFixture) waitConverged(what string) {
	x.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for _, a := range x.agents {
		for {
			want, _, err := x.inst.Controller.Snapshot(a.name)
			got := a.current()
			if err == nil && got.Revision > 0 && got.Equal(want) {
				break
			}
			if time.Now().After(deadline) {
				x.t.Fatalf("%s: %s's map (revision %d, %d peers %v) is not the replica's (%d peers %v): %v",
					what, a.name, got.Revision, len(got.Peers), peerNames(got), len(want.Peers), peerNames(want), err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func peerNames(m netmap.Map) []string {
	var out []string
	for _, p := range m.Peers {
		out = append(out, p.Name)
	}
	return out
}

// writeNoMapChanges renews every node's certificate and waits for a
// gateway heartbeat to be written: the store moves past every agent's
// revision without any map changing.
func (x *restartFixture) writeNoMapChanges() {
	x.t.Helper()
	top := int64(0)
	for _, a := range x.agents {
		top = max(top, a.current().Revision)
	}
	for _, a := range x.agents {
		if strings.HasPrefix(a.name, "gw-") {
			continue
		}
		id, err := a.id.Renew(x.ctx)
		if err != nil {
			x.t.Fatalf("renewing %s: %v", a.name, err)
		}
		a.id = id
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		kv, err := x.st.Get(x.ctx, "health/gw-eu")
		if err == nil && kv.ModRev > top {
			break
		}
		if time.Now().After(deadline) {
			x.t.Fatalf("no heartbeat written after revision %d: %v", top, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// restart stops the replica, runs between (a replica or an admin writing
// while it is down) and starts it again; every agent resumes from the
// revision of its map.
func (x *restartFixture) restart(between func()) {
	x.t.Helper()
	x.inst.Stop()
	for _, a := range x.agents {
		select {
		case <-a.f.done:
		case <-time.After(10 * time.Second):
			x.t.Fatalf("%s's stream did not end with its replica", a.name)
		}
	}
	if between != nil {
		x.start(nil)
		between()
		x.inst.Stop()
	}
	x.start(nil)
	for _, a := range x.agents {
		x.open(a, a.current().Revision)
	}
}

// resumes reads statemesh_watch_resumes_total by result, and
// statemesh_map_changes_unmarked_total as result "unmarked".
func resumes(t *testing.T, c *controller.Controller) map[string]int {
	t.Helper()
	rec := httptest.NewRecorder()
	c.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := map[string]int{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		var result, value string
		if rest, ok := strings.CutPrefix(line, `statemesh_watch_resumes_total{result="`); ok {
			result, value, _ = strings.Cut(rest, `"} `)
		} else if rest, ok := strings.CutPrefix(line, "statemesh_map_changes_unmarked_total "); ok {
			result, value = "unmarked", rest
		} else {
			continue
		}
		n, err := strconv.Atoi(value)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		out[result] = n
	}
	return out
}

// expectResumes checks which agents resumed with a snapshot (the others
// must have got none) and how many with deltas, once every agent has its
// replica's map.
func (x *restartFixture) expectResumes(what string, deltas int, snapshots ...string) {
	x.t.Helper()
	for _, a := range x.agents {
		a.f.waitFor(x.t, "first frame at "+a.name, func(api.Frame) bool { return true })
	}
	x.waitConverged(what)
	for _, a := range x.agents {
		got, want := a.count(api.FrameSnapshot), 0
		if slices.Contains(snapshots, a.name) {
			want = 1
		}
		if got != want {
			x.t.Errorf("%s: %s received %d snapshots after resuming, want %d", what, a.name, got, want)
		}
	}
	// unmarked: the markers alone cover every change (not the replica's
	// check of them).
	want := map[string]int{"current": len(x.agents) - deltas - len(snapshots), "deltas": deltas, "snapshot": len(snapshots), "unmarked": 0}
	if got := resumes(x.t, x.inst.Controller); fmt.Sprint(got) != fmt.Sprint(want) {
		x.t.Errorf("%s: resumes %v, want %v", what, got, want)
	}
}

func boltStore(t *testing.T) store.Store {
	s, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func etcdStore(t *testing.T) store.Store {
	cluster := etcdtest.Start(t, 1)
	s, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: cluster.Endpoints(), Prefix: "/restart/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var restartStores = []struct {
	name string
	open func(*testing.T) store.Store
}{{"bolt", boltStore}, {"etcd", etcdStore}}

// TestRestartResumesWithoutSnapshots: renewals and heartbeats move the
// store past every agent's revision, the only replica restarts, and every
// agent resumes without a snapshot; a join after the restart reaches its
// cluster as a delta.
func TestRestartResumesWithoutSnapshots(t *testing.T) {
	for _, s := range restartStores {
		t.Run(s.name, func(t *testing.T) {
			x := newRestartFixture(t, s.open(t))
			x.writeNoMapChanges()
			x.restart(nil)
			x.expectResumes("after the restart", 0)
			for _, a := range x.agents {
				if fr := a.f.all(); len(fr) == 0 || fr[0].Type != api.FramePing {
					t.Errorf("%s's resumed stream did not start with a ping: %v", a.name, fr)
				}
			}
			joiner := x.enroll(api.CreateTokenRequest{Cluster: "eu-central/prod"}, "p3", "node")
			for _, a := range x.agents {
				if a == joiner {
					continue
				}
				if a.name[0] == 'p' || a.name == "gw-eu" {
					a.f.waitFor(t, "p3's delta at "+a.name, upserts("p3"))
				}
			}
			x.open(joiner, 0)
			x.waitConverged("after a join")
			for _, a := range x.agents {
				if n := a.count(api.FrameSnapshot); a != joiner && n != 0 {
					t.Errorf("%s received %d snapshots since the restart", a.name, n)
				}
			}
		})
	}
}

// TestRestartAfterChangesWhileDown: a node joins and another is removed
// while the replica is down (by another controller on the same store);
// the agents whose maps changed resume with a snapshot that has the
// change, the others without one. Without persisted map revisions the
// first would be answered "current" and miss the change.
func TestRestartAfterChangesWhileDown(t *testing.T) {
	for _, s := range restartStores {
		t.Run(s.name, func(t *testing.T) {
			x := newRestartFixture(t, s.open(t))
			x.writeNoMapChanges()
			x.restart(func() {
				k, _ := netmap.GeneratePrivateKey()
				tok := x.inst.Token(t, api.CreateTokenRequest{Cluster: "eu-central/prod"})
				if _, err := apiclient.Enroll(x.ctx, x.inst.URL, tok, api.EnrollRequest{Name: "p9", Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.9:51820"}); err != nil {
					t.Fatal(err)
				}
				if err := x.inst.Controller.RemoveNode(x.ctx, "s1"); err != nil {
					t.Fatal(err)
				}
			})
			// s1 is gone: its stream is refused, its map not followed.
			x.agents = slices.DeleteFunc(x.agents, func(a *restartAgent) bool { return a.name == "s1" })
			x.expectResumes("after changes while down", 0, "gw-eu", "p0", "p1", "p2", "s0")
			for _, a := range x.agents {
				m := a.current()
				_, hasP9 := m.Peer("p9")
				_, hasS1 := m.Peer("s1")
				if wantP9 := a.name[0] == 'p' || a.name == "gw-eu"; hasP9 != wantP9 {
					t.Errorf("%s: p9 in its map: %v, want %v", a.name, hasP9, wantP9)
				}
				if hasS1 {
					t.Errorf("%s still has the removed s1", a.name)
				}
			}
		})
	}
}

// TestRestartAfterSpecChange: a spec that changes the underlay's MTU is
// applied while the replica is down; every agent resumes with a snapshot
// (the spec may change any map) with the new MTU.
func TestRestartAfterSpecChange(t *testing.T) {
	x := newRestartFixture(t, boltStore(t))
	before := x.agents[len(x.agents)-1].current().Interface.MTU // u1
	spec := strings.Replace(string(smallSpec(t)), "underlay:\n  mtu: 1500", "underlay:\n  mtu: 1400", 1)
	x.restart(func() {
		if _, err := x.inst.Controller.ApplySpec(x.ctx, []byte(spec)); err != nil {
			t.Fatal(err)
		}
	})
	var all []string
	for _, a := range x.agents {
		all = append(all, a.name)
	}
	x.expectResumes("after a spec change while down", 0, all...)
	if after := x.agents[len(x.agents)-1].current().Interface.MTU; after == before {
		t.Errorf("u1's MTU is still %d after the spec lowered the underlay MTU", after)
	}
}

// TestRestartResumeOlderThanFloor: an agent resuming from a revision older
// than a change of its cluster (p2's join, before the restart) gets a
// snapshot; the agents of the other clusters none.
func TestRestartResumeOlderThanFloor(t *testing.T) {
	x := newRestartFixture(t, boltStore(t))
	old := x.agents[2].current() // p0's map before p3 joins
	x.enroll(api.CreateTokenRequest{Cluster: "eu-central/prod"}, "p3", "node")
	x.agents = x.agents[:len(x.agents)-1] // p3 does not stream
	for _, a := range x.agents {
		if a.name[0] == 'p' || a.name == "gw-eu" {
			a.f.waitFor(t, "p3's delta at "+a.name, upserts("p3"))
		}
	}
	x.writeNoMapChanges()
	x.inst.Stop()
	x.start(nil)
	for _, a := range x.agents {
		<-a.f.done
		a.base = a.current()
		from := a.base.Revision
		if a.name == "p0" {
			a.base, from = old, old.Revision
		}
		a.f = stream(t, x.ctx, x.at(a), from)
	}
	x.expectResumes("resuming p0 from before p3 joined", 0, "p0")
	if _, ok := x.agents[2].current().Peer("p3"); !ok {
		t.Error("p0's snapshot lacks p3")
	}
}

// TestRestartJoinBeforeResumes: a node joins right after the restart,
// before the agents resume: those of its cluster (and its region's
// gateway) get the join as a delta from the replica's history, which
// reaches back to the load, where their revision was current; the others
// resume current.
func TestRestartJoinBeforeResumes(t *testing.T) {
	x := newRestartFixture(t, boltStore(t))
	x.writeNoMapChanges()
	x.inst.Stop()
	x.start(nil)
	x.enroll(api.CreateTokenRequest{Cluster: "eu-central/prod"}, "p3", "node")
	x.agents = x.agents[:len(x.agents)-1] // p3 does not stream
	for _, a := range x.agents {
		<-a.f.done
		x.open(a, a.current().Revision)
	}
	x.expectResumes("resuming after a join on the restarted replica", 4)
	for _, a := range x.agents {
		_, has := a.current().Peer("p3")
		if want := a.name[0] == 'p' || a.name == "gw-eu"; has != want {
			t.Errorf("%s: p3 in its map: %v, want %v", a.name, has, want)
		}
	}
}
