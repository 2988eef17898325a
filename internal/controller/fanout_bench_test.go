package controller_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/ctltest"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
	etcdstore "github.com/statemesh/statemesh/internal/store/etcd"
	"github.com/statemesh/statemesh/internal/store/etcd/etcdtest"
)

func fanoutSpec(nodes int) []byte {
	return []byte(fmt.Sprintf(`apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: fanout}
addressing: {podIPv6: ["fd00:10::/48"]}
regions:
  - name: r
    clusters: [{name: c, maxNodes: %d}]
`, nodes))
}

// enrollMany enrolls n nodes concurrently and returns their identities.
func enrollMany(tb testing.TB, inst *ctltest.Instance, tok string, n int, prefix string) []*apiclient.Identity {
	ids := make([]*apiclient.Identity, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var mu sync.Mutex
	var firstErr error
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			k, _ := netmap.GeneratePrivateKey()
			id, err := apiclient.Enroll(context.Background(), inst.URL, tok, api.EnrollRequest{
				Name: fmt.Sprintf("%s%05d", prefix, i), Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"})
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	if firstErr != nil {
		tb.Fatal(firstErr)
	}
	return ids
}

// fanout opens one watch stream per node (over real TLS connections on
// loopback, resuming at the current revision so no snapshot is sent), lets
// one more node join, and measures when each stream received the join's
// delta.
func fanout(b *testing.B, st store.Store, size int) {
	// A cluster of size nodes: size-1 are enrolled and watching, one joins.
	nodes := size - 1
	inst := ctltest.Start(b, ctltest.Options{Store: st, Spec: fanoutSpec(size)})
	if inst.Admin == nil {
		b.Fatal("no admin credential: the store was not empty")
	}
	tok := inst.Token(b, api.CreateTokenRequest{Cluster: "r/c", Uses: nodes + 1})
	ids := enrollMany(b, inst, tok, nodes, "n")
	if err := inst.Controller.WaitRevision(context.Background(), ids[len(ids)-1].Revision); err != nil {
		b.Fatal(err)
	}
	rev := inst.Controller.Revision()
	var wg sync.WaitGroup
	got := make([]time.Duration, nodes)
	ready := make(chan struct{}, nodes)
	var t0 time.Time
	var t0mu sync.RWMutex
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i, id := range ids {
		c, err := id.Client()
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			signalled := false
			c.Watch(ctx, rev, func(f api.Frame) error {
				if !signalled {
					signalled = true
					ready <- struct{}{}
				}
				if f.Type == api.FrameDelta && f.Delta != nil && len(f.Delta.Upsert) == 1 && f.Delta.Upsert[0].Name == "joiner" {
					t0mu.RLock()
					got[i] = time.Since(t0)
					t0mu.RUnlock()
					return context.Canceled
				}
				return nil
			})
		}()
	}
	for range nodes {
		select {
		case <-ready:
		case <-time.After(120 * time.Second):
			b.Fatal("streams did not open")
		}
	}
	b.ResetTimer()
	t0mu.Lock()
	t0 = time.Now()
	t0mu.Unlock()
	k, _ := netmap.GeneratePrivateKey()
	if _, err := apiclient.Enroll(context.Background(), inst.URL, tok, api.EnrollRequest{Name: "joiner", Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.2:51820"}); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		b.Fatal("not every stream received the join within 60s")
	}
	b.StopTimer()
	slices.Sort(got)
	p50, p99, max := got[len(got)/2], got[len(got)*99/100], got[len(got)-1]
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(max.Microseconds())/1000, "max-ms")
	b.Logf("%d streams: join delta delivered p50 %s p99 %s max %s", nodes, p50, p99, max)
}

// BenchmarkFanout measures the time until every peer of a cluster has the
// delta of a node joining it. Run with -benchtime=1x.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{500, 1000, 2000, 5000} {
		b.Run(fmt.Sprintf("bolt/%d", n), func(b *testing.B) { fanout(b, nil, n) })
	}
	if os.Getenv("STATEMESH_BENCH_ETCD") != "" {
		cluster := etcdtest.Start(b, 1)
		for _, n := range []int{500, 5000} {
			b.Run(fmt.Sprintf("etcd/%d", n), func(b *testing.B) {
				s, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: cluster.Endpoints(), Prefix: fmt.Sprintf("/fanout-%d-%d/", n, time.Now().UnixNano())})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				fanout(b, s, n)
			})
		}
	}
}
