package fault_test

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/server"
)

// joinWave enrolls n nodes (4 at a time) and returns, per node name, when
// its enrollment request started.
func joinWave(t *testing.T, url, token, prefix string, n int) map[string]time.Time {
	t.Helper()
	started := map[string]time.Time{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			name := fmt.Sprintf("%s%04d", prefix, i)
			k, _ := netmap.GeneratePrivateKey()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			if _, err := apiclient.Enroll(ctx, url, token, api.EnrollRequest{Name: name, Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"}); err != nil {
				t.Errorf("enrolling %s: %v", name, err)
				return
			}
			mu.Lock()
			started[name] = start
			mu.Unlock()
		}()
	}
	wg.Wait()
	return started
}

// delays waits until every watcher has every joined node and returns the
// delays from each enrollment's start to its arrival in each map.
func delays(t *testing.T, ws []*peerWatcher, joined map[string]time.Time, within time.Duration) []time.Duration {
	t.Helper()
	deadline := time.Now().Add(within)
	var out []time.Duration
	for i, w := range ws {
		for name, start := range joined {
			for {
				at, ok := w.has(name)
				if ok {
					out = append(out, at.Sub(start))
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("DELTA LOST: watcher %d never received the join of %s (it has %d peers)", i, name, w.peers())
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	return out
}

func liveHeap() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestStuckWatcherDoesNotDelayOthers: 40 nodes stream their maps; one more
// opens its stream with a 4 KiB receive buffer and stops reading. Joins
// must reach the 40 as fast as they did before the stuck stream existed;
// the stuck stream's queue overflows (statemesh_watch_overflows_total goes
// up: it will get a snapshot, not an unbounded backlog) and, once its
// writes stall for the stream write timeout, the server disconnects it,
// releasing everything it held.
func TestStuckWatcherDoesNotDelayOthers(t *testing.T) {
	const (
		queueLen     = 32
		writeTimeout = 8 * time.Second
		watchers     = 40
		wave         = 150
	)
	p := startInProc(t,
		controller.Config{QueueLen: queueLen},
		server.Config{PingEvery: time.Second, Limits: server.Limits{StreamWriteTimeout: writeTimeout}},
		stormSpec)
	tok := p.token(t, "r1/c1", 2000)
	// 300 nodes, so a snapshot (≈100 KiB) fills the stuck stream's buffers.
	base := enrollAll(t, p.url, tok, "base", 300, 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ws []*peerWatcher
	for _, id := range base[:watchers] {
		ws = append(ws, watchPeers(ctx, t, id))
	}
	for i, w := range ws {
		deadline := time.Now().Add(20 * time.Second)
		for w.peers() < 299+2 {
			if time.Now().After(deadline) {
				t.Fatalf("watcher %d has %d peers, want 301 (299 nodes and 2 gateways are not enrolled: nodes only) ", i, w.peers())
			}
			time.Sleep(10 * time.Millisecond)
			if w.peers() >= 299 {
				break
			}
		}
	}

	// Baseline: joins with every stream reading.
	fanSum, fanCount := p.metric(t, "statemesh_fanout_delay_seconds_sum"), p.metric(t, "statemesh_fanout_delay_seconds_count")
	joined := joinWave(t, p.url, tok, "calm", wave)
	calm := delays(t, ws, joined, 20*time.Second)
	heapBefore := liveHeap()
	calmFan := time.Duration((p.metric(t, "statemesh_fanout_delay_seconds_sum") - fanSum) / (p.metric(t, "statemesh_fanout_delay_seconds_count") - fanCount) * float64(time.Second))
	fanSum, fanCount = p.metric(t, "statemesh_fanout_delay_seconds_sum"), p.metric(t, "statemesh_fanout_delay_seconds_count")

	// One stream stops reading.
	overflowsBefore := p.metric(t, "statemesh_watch_overflows_total")
	streamsBefore := p.metric(t, "statemesh_watch_streams")
	stuck := stuckStream(t, p.url, base[watchers])
	stuckAt := time.Now()
	joined = joinWave(t, p.url, tok, "stuck", wave)
	waveTook := time.Since(stuckAt)
	during := delays(t, ws, joined, 20*time.Second)
	heapDuring := liveHeap()
	overflows := p.metric(t, "statemesh_watch_overflows_total") - overflowsBefore
	stuckFan := time.Duration((p.metric(t, "statemesh_fanout_delay_seconds_sum") - fanSum) / (p.metric(t, "statemesh_fanout_delay_seconds_count") - fanCount) * float64(time.Second))
	t.Logf("FIGURE server-side fan-out delay (statemesh_fanout_delay_seconds, publish to write), mean: all reading %s, one stuck %s; the stuck wave took %s",
		calmFan.Round(time.Microsecond), stuckFan.Round(time.Microsecond), waveTook.Round(time.Millisecond))
	if waveTook > writeTimeout {
		t.Logf("the wave outlasted the write timeout: the overflow check below may see the stream cut first")
	}

	t.Logf("FIGURE fan-out delay to %d watchers, %d joins (enrollment start to delta received): all reading p50 %s p99 %s max %s; one stuck p50 %s p99 %s max %s",
		watchers, wave, percentile(calm, .5).Round(time.Microsecond), percentile(calm, .99).Round(time.Microsecond), percentile(calm, 1).Round(time.Microsecond),
		percentile(during, .5).Round(time.Microsecond), percentile(during, .99).Round(time.Microsecond), percentile(during, 1).Round(time.Microsecond))
	t.Logf("FIGURE live heap %d KiB before the stuck stream, %d KiB with it after %d more joins (queue bound %d frames); overflows %v",
		heapBefore>>10, heapDuring>>10, wave, queueLen, overflows)
	if p99c, p99s := percentile(calm, .99), percentile(during, .99); p99s > 2*p99c+250*time.Millisecond {
		t.Errorf("FAN-OUT DELAYED: with one stuck stream the p99 join delay is %s, against %s with all streams reading", p99s, p99c)
	}
	if overflows < 1 {
		t.Errorf("UNBOUNDED QUEUE: %d deltas went to a stream that stopped reading, and statemesh_watch_overflows_total did not move (queue bound %d)", wave, queueLen)
	}
	// The stuck stream is cut once a write to it stalls for writeTimeout.
	deadline := time.Now().Add(writeTimeout + 10*time.Second)
	for p.metric(t, "statemesh_watch_streams") > streamsBefore {
		if time.Now().After(deadline) {
			t.Fatalf("STUCK STREAM KEPT: %v streams %s after the stream stopped reading (write timeout %s); it still holds its connection and goroutine",
				p.metric(t, "statemesh_watch_streams"), time.Since(stuckAt).Round(time.Millisecond), writeTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("FIGURE the stuck stream was disconnected %s after it stopped reading (write timeout %s)", time.Since(stuckAt).Round(time.Millisecond), writeTimeout)
	stuck.Close()
	// The others are still served.
	joined = joinWave(t, p.url, tok, "after", 10)
	delays(t, ws, joined, 10*time.Second)
}
