package fault_test

import (
	"context"
	"maps"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/secrets"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
	etcdstore "github.com/statemesh/statemesh/internal/store/etcd"
	"github.com/statemesh/statemesh/internal/store/etcd/etcdtest"
)

const (
	stormSize    = 300 // enrollments per storm
	stormWorkers = 24  // concurrent enrolling clients
	crashes      = 3   // SIGKILLs per test
	killEvery    = 70  // acknowledgements between two kills
)

// TestKill9DuringEnrollmentStormBolt: the controller (embedded bbolt store,
// fsync on) is killed with SIGKILL three times during 300 concurrent
// enrollments, every 70 acknowledgements. After each crash the store must
// hold every acknowledged enrollment with the key and addresses it was
// acknowledged with, no address twice, no half-written record, and exact
// token counts; the restarted controller serves all of it, the retried
// enrollments then all succeed, and revisions only go forward.
func TestKill9DuringEnrollmentStormBolt(t *testing.T) {
	p := startController(t, "ctl", procOptions{spec: stormSpec})
	crashStorm(t, p, func(t *testing.T) ([]store.KV, int64) {
		s, err := bolt.Open(p.dataDir, bolt.Options{})
		if err != nil {
			t.Fatalf("the store does not open after the crash: %v", err)
		}
		defer s.Close()
		kvs, rev, err := s.List(context.Background(), "")
		if err != nil {
			t.Fatalf("listing the store after the crash: %v", err)
		}
		return kvs, rev
	})
}

// TestKill9DuringEnrollmentStormEtcd: the same with the etcd store (a real
// etcd on loopback that stays up while the controller dies).
func TestKill9DuringEnrollmentStormEtcd(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	kek := filepath.Join(t.TempDir(), "kek")
	if _, err := secrets.CreateFile(kek); err != nil {
		t.Fatal(err)
	}
	const prefix = "/fault-crash/"
	p := startController(t, "ctl", procOptions{spec: stormSpec, etcd: cluster.Endpoints(), etcdPrefix: prefix, kekFile: kek})
	crashStorm(t, p, func(t *testing.T) ([]store.KV, int64) {
		s, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: cluster.Endpoints(), Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		kvs, rev, err := s.List(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		return kvs, rev
	})
}

func crashStorm(t *testing.T, p *controllerProc, read func(t *testing.T) ([]store.KV, int64)) {
	ctx := bounded(t, 3*time.Minute)
	admin := adminClient(t, adminConfig(t, p.dataDir, p.URL()))
	tok, err := admin.CreateToken(ctx, api.CreateTokenRequest{Cluster: "r1/c1", Uses: stormSize})
	if err != nil {
		t.Fatal(err)
	}
	nodes := stormNodes(t, "n", stormSize)
	res := newStormResult()
	// Three crashes: each storm over the nodes not yet acknowledged is cut
	// by SIGKILL after killEvery more acknowledgements.
	for cycle := 1; cycle <= crashes; cycle++ {
		var pending []stormNode
		res.mu.Lock()
		base := len(res.acked)
		for _, n := range nodes {
			if _, ok := res.acked[n.name]; !ok {
				pending = append(pending, n)
			}
		}
		res.failed, res.refused = map[string]error{}, map[string]error{}
		res.mu.Unlock()
		var once sync.Once
		var killedAt time.Time
		start := time.Now()
		storm(ctx, []string{p.URL()}, tok.Secret, pending, stormWorkers, res, func(n int) {
			if n >= base+killEvery {
				once.Do(func() {
					killedAt = time.Now()
					p.kill()
				})
			}
		})
		res.mu.Lock()
		ackedAtCrash := maps.Clone(res.acked)
		failed := maps.Clone(res.failed)
		refused := maps.Clone(res.refused)
		res.mu.Unlock()
		if killedAt.IsZero() {
			t.Fatalf("crash %d: the storm ended with %d acknowledgements, before the kill point", cycle, len(ackedAtCrash))
		}
		for name, err := range refused {
			t.Errorf("crash %d: enrollment of %s refused by the controller: %v", cycle, name, err)
		}
		t.Logf("FIGURE crash %d: %d acknowledged in total (%d in this storm, %s), %d failed by the kill", cycle, len(ackedAtCrash), len(ackedAtCrash)-base, killedAt.Sub(start).Round(time.Millisecond), len(failed))

		// The store as the crash left it.
		kvs, rev := read(t)
		found := checkRecords(t, kvs, ackedAtCrash)
		checkRevisions(t, ackedAtCrash, rev)
		inflight := 0
		for name := range failed {
			if _, ok := found[name]; ok {
				inflight++
			}
		}
		t.Logf("FIGURE crash %d: %d nodes in the store after the crash (%d committed whose answer was lost), revision %d", cycle, len(found), inflight, rev)
		if t.Failed() {
			t.Logf("controller log:\n%s", p.log())
			t.FailNow()
		}
		restartAt := time.Now()
		if err := p.restart(); err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE crash %d: restart to serving %s; outage (kill to serving) %s", cycle, time.Since(restartAt).Round(time.Millisecond), time.Since(killedAt).Round(time.Millisecond))
		listed, err := admin.Nodes(ctx, "", "")
		if err != nil {
			t.Fatal(err)
		}
		if len(listed) != len(found) {
			t.Errorf("crash %d: the restarted controller lists %d nodes, the store holds %d", cycle, len(listed), len(found))
		}
	}

	// Agents retry what failed, with the same name and key: a lost answer
	// gets the same record back, the rest are enrolled now.
	res.mu.Lock()
	before := maxRevision(res.acked)
	ackedBefore := maps.Clone(res.acked)
	res.failed, res.refused = map[string]error{}, map[string]error{}
	res.mu.Unlock()
	var retry []stormNode
	for _, n := range nodes {
		if _, ok := ackedBefore[n.name]; !ok {
			retry = append(retry, n)
		}
	}
	storm(ctx, []string{p.URL()}, tok.Secret, retry, stormWorkers, res, nil)
	res.mu.Lock()
	for name, err := range res.failed {
		t.Errorf("retried enrollment of %s failed after the restart: %v", name, err)
	}
	for name, err := range res.refused {
		t.Errorf("retried enrollment of %s refused after the restart: %v", name, err)
	}
	all := maps.Clone(res.acked)
	res.mu.Unlock()
	if len(all) != stormSize {
		t.Errorf("%d of %d enrollments acknowledged in the end", len(all), stormSize)
	}
	for name, a := range all {
		if _, old := ackedBefore[name]; !old && a.revision <= before {
			t.Errorf("REVISION WENT BACK: %s enrolled after the restarts at revision %d, not after %d (before the last crash)", name, a.revision, before)
		}
	}
	// The token is used up: its use count survived the crashes exactly.
	storm(ctx, []string{p.URL()}, tok.Secret, stormNodes(t, "extra", 1), 1, res, nil)
	res.mu.Lock()
	if err := res.refused["extra0000"]; code(err) != api.CodeTokenUsedUp {
		t.Errorf("enrollment past the token's %d uses: %v (the use count was lost in a crash)", stormSize, err)
	}
	res.mu.Unlock()

	p.kill()
	kvs, rev := read(t)
	found := checkRecords(t, kvs, all)
	checkRevisions(t, all, rev)
	if len(found) != stormSize {
		t.Errorf("the store holds %d nodes after the storm, want %d", len(found), stormSize)
	}
	if t.Failed() {
		t.Logf("controller log:\n%s", p.log())
	}
}

func code(err error) string {
	if err == nil {
		return "ok"
	}
	if ae, ok := err.(*api.Error); ok {
		return ae.Code
	}
	return "not an API error: " + err.Error()
}
