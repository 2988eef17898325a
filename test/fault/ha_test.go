package fault_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/secrets"
	etcdstore "github.com/statemesh/statemesh/internal/store/etcd"
	"github.com/statemesh/statemesh/internal/store/etcd/etcdtest"
)

// failoverWatcher follows a node's map like an agent that knows several
// controller URLs: when its stream breaks it resumes from its last
// revision on the next URL. (apiclient.Client talks to one controller;
// the failover is here, as an agent with several --controller URLs would
// do it.)
type failoverWatcher struct {
	id   *apiclient.Identity
	urls []string

	mu       sync.Mutex
	m        netmap.Map
	rev      int64
	cur      int
	switches []string
}

func (w *failoverWatcher) run(ctx context.Context) {
	for ctx.Err() == nil {
		w.mu.Lock()
		idc := *w.id
		idc.Server = w.urls[w.cur]
		from := w.rev
		w.mu.Unlock()
		c, err := idc.Client()
		if err == nil {
			err = c.Watch(ctx, from, func(f api.Frame) error {
				w.mu.Lock()
				defer w.mu.Unlock()
				switch f.Type {
				case api.FrameSnapshot:
					w.m = *f.Map
				case api.FrameDelta:
					w.m = w.m.Apply(*f.Delta)
				}
				w.rev = max(w.rev, f.Revision)
				return nil
			})
			c.CloseIdle()
		}
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		w.switches = append(w.switches, fmt.Sprintf("%s: %v", w.urls[w.cur], err))
		w.cur = (w.cur + 1) % len(w.urls)
		w.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (w *failoverWatcher) url() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.urls[w.cur]
}

// waitPeer waits until the watched map has peer name and returns how long
// that took.
func (w *failoverWatcher) waitPeer(t *testing.T, name string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		w.mu.Lock()
		_, ok := w.m.Peer(name)
		w.mu.Unlock()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > within {
			w.mu.Lock()
			defer w.mu.Unlock()
			t.Fatalf("MAP UPDATE LOST: %s never reached the watching node within %s (streaming from %s, switches %v)", name, within, w.urls[w.cur], w.switches)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// enroller enrolls nodes one after another through a list of controller
// URLs, staying on one until it fails, and records the longest time
// without an acknowledgement.
type enroller struct {
	urls  []string
	token string
	res   *stormResult

	mu      sync.Mutex
	cur     int
	last    time.Time
	maxGap  time.Duration
	gapFrom string
	n       int
}

func (e *enroller) run(ctx context.Context, prefix string) {
	e.mu.Lock()
	e.last = time.Now()
	e.mu.Unlock()
	for i := 0; ctx.Err() == nil; i++ {
		k, _ := netmap.GeneratePrivateKey()
		certKey, _ := apiclient.NewNodeKey() // kept across retries, as an agent keeps it
		name := fmt.Sprintf("%s%04d", prefix, i)
		for attempt := 0; attempt < 2*len(e.urls) && ctx.Err() == nil; attempt++ {
			e.mu.Lock()
			url := e.urls[e.cur]
			e.mu.Unlock()
			cctx, cancel := context.WithTimeout(ctx, 8*time.Second)
			id, err := apiclient.EnrollWithKey(cctx, url, e.token, api.EnrollRequest{Name: name, Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"}, nil, certKey)
			cancel()
			if err == nil {
				now := time.Now()
				e.mu.Lock()
				if gap := now.Sub(e.last); gap > e.maxGap {
					e.maxGap, e.gapFrom = gap, e.last.Format("15:04:05.000")
				}
				e.last = now
				e.n++
				e.mu.Unlock()
				e.res.mu.Lock()
				e.res.acked[name] = ack{name: name, key: k.PublicKey(), overlay: id.Node.OverlayIPv4, pod: id.Node.PodIPv4, revision: id.Revision}
				e.res.mu.Unlock()
				break
			}
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code != api.CodeUnavailable {
				e.res.mu.Lock()
				e.res.refused[name] = err
				e.res.mu.Unlock()
				break
			}
			e.mu.Lock()
			e.cur = (e.cur + 1) % len(e.urls)
			e.mu.Unlock()
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stats returns the acknowledgements so far and the longest gap, and
// restarts gap measurement.
func (e *enroller) stats() (int, time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, g := e.n, e.maxGap
	e.maxGap = 0
	return n, max(g, time.Since(e.last))
}

func (e *enroller) waitMore(t *testing.T, more int, within time.Duration, what string) {
	t.Helper()
	e.mu.Lock()
	target := e.n + more
	e.mu.Unlock()
	deadline := time.Now().Add(within)
	for {
		e.mu.Lock()
		n := e.n
		e.mu.Unlock()
		if n >= target {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ENROLLMENT STALLED %s: %d of %d more enrollments acknowledged within %s", what, n-(target-more), more, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func etcdLeader(t *testing.T, c *etcdtest.Cluster) int {
	t.Helper()
	for i, m := range c.Members {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cli.Status(ctx, m.ClientURL)
		cancel()
		cli.Close()
		if err == nil && st.Leader == st.Header.MemberId {
			return i
		}
	}
	t.Fatal("no etcd leader")
	return -1
}

// TestHAEtcdReplicas: three etcd members and two controller replicas (B
// reaches etcd only through proxies this test controls). A node streams its
// map from B while nodes enroll continuously through whichever replica
// answers. The etcd leader is killed, then replica B, then B (restarted) is
// partitioned from etcd. Enrollments and map updates must continue through
// the survivors; the partitioned replica must accept no write (its writes
// fail with 503 unavailable within the store's request timeout, and nothing
// it was asked to write appears in etcd); after the partition heals its
// stale registry must not make it hand out an address twice (each
// allocation is a compare on the slot key's etcd revision). In the end both
// replicas agree and every record decodes.
func TestHAEtcdReplicas(t *testing.T) {
	ctx := bounded(t, 3*time.Minute)
	cluster := etcdtest.Start(t, 3)
	kek := filepath.Join(t.TempDir(), "kek")
	if _, err := secrets.CreateFile(kek); err != nil {
		t.Fatal(err)
	}
	const prefix = "/fault-ha/"
	var proxies []*tcpProxy
	var viaProxy []string
	for _, ep := range cluster.Endpoints() {
		px := startProxy(t, strings.TrimPrefix(ep, "http://"))
		proxies = append(proxies, px)
		viaProxy = append(viaProxy, "http://"+px.Addr())
	}
	a := startController(t, "a", procOptions{spec: stormSpec, etcd: cluster.Endpoints(), etcdPrefix: prefix, kekFile: kek})
	b := startController(t, "b", procOptions{etcd: viaProxy, etcdPrefix: prefix, kekFile: kek})
	cfg := adminConfig(t, a.dataDir, a.URL())
	admin := adminClient(t, cfg)
	bcfg := cfg
	bcfg.Server = b.URL()
	adminB := adminClient(t, bcfg)
	tok, err := admin.CreateToken(ctx, api.CreateTokenRequest{Cluster: "r1/c1", Uses: 3000})
	if err != nil {
		t.Fatal(err)
	}
	enroll := func(url, name string) (*apiclient.Identity, error) {
		k, _ := netmap.GeneratePrivateKey()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return apiclient.Enroll(cctx, url, tok.Secret, api.EnrollRequest{Name: name, Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"})
	}
	res := newStormResult()
	record := func(id *apiclient.Identity, k netmap.Key) {
		res.mu.Lock()
		res.acked[id.Node.Name] = ack{name: id.Node.Name, key: k, overlay: id.Node.OverlayIPv4, pod: id.Node.PodIPv4, revision: id.Revision}
		res.mu.Unlock()
	}
	watched, err := enroll(a.URL(), "watched")
	if err != nil {
		t.Fatal(err)
	}
	record(watched, watched.Node.PublicKey)
	w := &failoverWatcher{id: watched, urls: []string{b.URL(), a.URL()}}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go w.run(wctx)
	e := &enroller{urls: []string{a.URL(), b.URL()}, token: tok.Secret, res: res}
	ectx, stopEnroll := context.WithCancel(ctx)
	enrollDone := make(chan struct{})
	go func() { e.run(ectx, "bg"); close(enrollDone) }()
	defer func() { stopEnroll(); <-enrollDone }()
	e.waitMore(t, 10, 20*time.Second, "before any fault")
	probe := 0
	mapUpdate := func(via string, within time.Duration) time.Duration {
		t.Helper()
		probe++
		name := fmt.Sprintf("probe%d", probe)
		id, err := enroll(via, name)
		if err != nil {
			t.Fatalf("ENROLLMENT FAILED through %s: %v", via, err)
		}
		record(id, id.Node.PublicKey)
		return w.waitPeer(t, name, within)
	}
	d := mapUpdate(a.URL(), 10*time.Second)
	t.Logf("FIGURE steady state: a node enrolled through A reached the node streaming from B in %s", d.Round(time.Millisecond))

	// 1. Kill the etcd leader.
	leader := etcdLeader(t, cluster)
	e.stats()
	killed := time.Now()
	cluster.Members[leader].Kill()
	e.waitMore(t, 10, 20*time.Second, "after the etcd leader was killed")
	d = mapUpdate(b.URL(), 15*time.Second)
	n, gap := e.stats()
	t.Logf("FIGURE etcd leader %s killed: longest gap between acknowledged enrollments %s; 10 more enrolled %s after the kill; a map update through B reached the watcher in %s (%d enrolled so far)",
		cluster.Members[leader].Name, gap.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), d.Round(time.Millisecond), n)

	// 2. Kill replica B, which the node streams from.
	if w.url() != b.URL() {
		t.Fatalf("the watcher left B before B was killed: %v", w.switches)
	}
	e.stats()
	killed = time.Now()
	b.kill()
	d = mapUpdate(a.URL(), 15*time.Second)
	e.waitMore(t, 10, 20*time.Second, "after replica B was killed")
	_, gap = e.stats()
	t.Logf("FIGURE replica B killed: the node failed over to A and got a map update %s after the kill (update delivered %s after its enrollment); longest enrollment gap %s",
		time.Since(killed).Round(time.Millisecond), d.Round(time.Millisecond), gap.Round(time.Millisecond))
	if w.url() != a.URL() {
		t.Errorf("the watcher is on %s after B died, want A", w.url())
	}

	// 3. Bring B back, then partition it from etcd.
	cluster.Members[leader].Restart(t)
	if err := b.restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := enroll(b.URL(), "via-b-healthy"); err != nil {
		t.Fatalf("restarted replica B does not enroll: %v", err)
	}
	for _, px := range proxies {
		px.Cut()
	}
	cut := time.Now()
	_, err = enroll(b.URL(), "wrong-side")
	took := time.Since(cut)
	if code(err) != api.CodeUnavailable {
		t.Errorf("SPLIT BRAIN: the partitioned replica answered an enrollment with %v, want a clean unavailable error", err)
	}
	if took > 12*time.Second {
		t.Errorf("the partitioned replica took %s to refuse a write (bound: the store's 5s request timeout)", took)
	}
	if _, err := adminB.CreateToken(ctx, api.CreateTokenRequest{Cluster: "r1/c1"}); code(err) != api.CodeUnavailable {
		t.Errorf("SPLIT BRAIN: the partitioned replica answered a token creation with %v, want unavailable", err)
	}
	t.Logf("FIGURE partitioned replica refused an enrollment in %s with: %v", took.Round(time.Millisecond), err)
	e.waitMore(t, 10, 30*time.Second, "while B was partitioned")
	d = mapUpdate(a.URL(), 10*time.Second)
	t.Logf("FIGURE during the partition: enrollments through A continue; map update delivered in %s", d.Round(time.Millisecond))

	// 4. Heal: B's registry is behind; its first enrollments must still
	// not reuse an address (fencing by etcd revisions).
	for _, px := range proxies {
		px.Heal()
	}
	healed := time.Now()
	var recovered time.Duration
	for i := 0; i < 5; {
		k, _ := netmap.GeneratePrivateKey()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		id, err := apiclient.Enroll(cctx, b.URL(), tok.Secret, api.EnrollRequest{Name: fmt.Sprintf("after-heal%d", i), Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"})
		cancel()
		if code(err) == api.CodeUnavailable && time.Since(healed) < 30*time.Second {
			// The etcd client reconnects with backoff; the write failed
			// cleanly, so retrying is safe (same name, new key: a write
			// that did commit would make the retry fail with
			// already_exists, and the check below would report it).
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("replica B after the partition healed: %v", err)
		}
		if i == 0 {
			recovered = time.Since(healed)
		}
		record(id, k.PublicKey())
		i++
	}
	t.Logf("FIGURE partition healed: replica B's first write succeeded %s after the heal; 5 enrolled within %s", recovered.Round(time.Millisecond), time.Since(healed).Round(time.Millisecond))
	stopEnroll()
	<-enrollDone
	stopWatch()

	// Nothing was written on the wrong side, nothing acknowledged is lost,
	// no address is held twice, every record decodes.
	s, err := etcdstore.Open(ctx, etcdstore.Options{Endpoints: cluster.Endpoints(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	kvs, rev, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	res.mu.Lock()
	acked := res.acked
	for name, err := range res.refused {
		t.Errorf("enrollment of %s refused: %v", name, err)
	}
	res.mu.Unlock()
	nodes := checkRecords(t, kvs, acked)
	checkRevisions(t, acked, rev)
	if _, ok := nodes["wrong-side"]; ok {
		t.Errorf("SPLIT BRAIN: the enrollment sent to the partitioned replica was written to etcd")
	}
	t.Logf("FIGURE %d enrollments acknowledged across the faults, %d nodes in etcd at revision %d", len(acked), len(nodes), rev)
	// Both replicas converge on the same registry.
	deadline := time.Now().Add(15 * time.Second)
	for {
		na, errA := admin.Nodes(ctx, "", "")
		nb, errB := adminB.Nodes(ctx, "", "")
		if errA == nil && errB == nil && len(na) == len(nodes) && len(nb) == len(nodes) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas disagree after healing: A lists %d (%v), B %d (%v), etcd holds %d", len(na), errA, len(nb), errB, len(nodes))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if t.Failed() {
		t.Logf("A log:\n%s\nB log:\n%s", a.log(), b.log())
	}
}

// TestPartitionedReplicaEndsStreams: a node streams its map from replica B;
// B is cut off from etcd while the mesh changes through A. B can no longer
// know the mesh, so it must end its streams (within 15 s) and let its
// nodes resume on a replica that can, rather than keep them on a frozen map
// with pings that look healthy.
func TestPartitionedReplicaEndsStreams(t *testing.T) {
	ctx := bounded(t, 2*time.Minute)
	cluster := etcdtest.Start(t, 1)
	kek := filepath.Join(t.TempDir(), "kek")
	if _, err := secrets.CreateFile(kek); err != nil {
		t.Fatal(err)
	}
	const prefix = "/fault-stale/"
	px := startProxy(t, strings.TrimPrefix(cluster.Endpoints()[0], "http://"))
	a := startController(t, "a", procOptions{spec: stormSpec, etcd: cluster.Endpoints(), etcdPrefix: prefix, kekFile: kek})
	b := startController(t, "b", procOptions{etcd: []string{"http://" + px.Addr()}, etcdPrefix: prefix, kekFile: kek})
	admin := adminClient(t, adminConfig(t, a.dataDir, a.URL()))
	tok, err := admin.CreateToken(ctx, api.CreateTokenRequest{Cluster: "r1/c1", Uses: 10})
	if err != nil {
		t.Fatal(err)
	}
	enroll := func(name string) *apiclient.Identity {
		k, _ := netmap.GeneratePrivateKey()
		id, err := apiclient.Enroll(ctx, a.URL(), tok.Secret, api.EnrollRequest{Name: name, Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	watched := enroll("watched")
	w := &failoverWatcher{id: watched, urls: []string{b.URL()}}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go w.run(wctx)
	enroll("before")
	w.waitPeer(t, "before", 10*time.Second)

	px.Cut()
	cut := time.Now()
	enroll("during")
	for {
		w.mu.Lock()
		ended := len(w.switches) > 0
		_, got := w.m.Peer("during")
		w.mu.Unlock()
		if ended || got {
			t.Logf("FIGURE the partitioned replica ended its streams %s after the cut", time.Since(cut).Round(time.Millisecond))
			return
		}
		if time.Since(cut) > 15*time.Second {
			t.Fatalf("STALE MAP: 15 s after replica B lost etcd, the node streaming from it has neither the change made through A nor a broken stream to fail over on")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
