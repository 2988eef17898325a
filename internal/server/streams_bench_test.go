package server_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/ctltest"
	"github.com/statemesh/statemesh/internal/netmap"
)

// streamBenchEnv returns an integer setting of the streams benchmark.
func streamBenchEnv(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 2 {
		tb.Fatalf("%s=%q: want an integer ≥ 2", name, v)
	}
	return n
}

// BenchmarkWatchStreams measures what an open watch stream costs the
// controller and how fast a join reaches one cluster's streams when many
// more are open: STATEMESH_BENCH_STREAMS streams (default 2,000) over
// real TLS connections on loopback, held by clients in a child process
// (this test binary re-executed), spread over clusters of
// STATEMESH_BENCH_CLUSTER nodes (default 5,000, or the stream count if
// smaller). One more node then joins the first cluster. Each mode is run:
// "held" serves each stream on its HTTP connection's goroutine (the
// transport before detached streams: the baseline), "detached" is the
// default; STATEMESH_BENCH_STREAM_MODES=detached runs one.
//
// Per stream: the controller process's heap in use plus goroutine stacks
// after a GC (heap+stack-KiB/stream), its RSS (rss-KiB/stream) and its
// goroutines (goroutines/stream), each the difference between every
// stream open and every node enrolled with no stream. The join: e2e-*
// is from the joiner's enrollment call until each stream's client has
// decoded the delta, ctl-last-write-ms until the controller finished
// writing the last stream's frames. Run with -benchtime=1x; raise
// ulimit -n for large counts.
func BenchmarkWatchStreams(b *testing.B) {
	modes := []string{"held", "detached"}
	if v := os.Getenv("STATEMESH_BENCH_STREAM_MODES"); v != "" {
		modes = strings.Split(v, ",")
	}
	if os.Getenv("STATEMESH_BENCH_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 256 // fine enough to attribute a stream's bytes
	}
	streams := streamBenchEnv(b, "STATEMESH_BENCH_STREAMS", 2000)
	size := min(streamBenchEnv(b, "STATEMESH_BENCH_CLUSTER", 5000), streams+1)
	for _, mode := range modes {
		b.Run(fmt.Sprintf("%s/%d", mode, streams), func(b *testing.B) { watchStreams(b, mode == "held", streams, size) })
	}
}

func watchStreams(b *testing.B, held bool, streams, size int) {
	mode := "detached"
	if held {
		mode = "held"
	}
	// Clusters of size nodes: the first has size-1 streams and the joiner.
	var counts []int
	for left := streams; left > 0; {
		n := min(left, size)
		if len(counts) == 0 {
			n = min(left, size-1)
		}
		counts = append(counts, n)
		left -= n
	}
	var spec strings.Builder
	spec.WriteString("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: streams}\naddressing: {podIPv6: [\"fd00:10::/48\"]}\nregions:\n")
	for i := range counts {
		if i%10 == 0 { // at most 10 clusters a region
			fmt.Fprintf(&spec, "  - name: r%d\n    clusters:\n", i/10)
		}
		fmt.Fprintf(&spec, "      - {name: c%d, maxNodes: %d}\n", i%10, size)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && uint64(streams)+500 > lim.Cur {
		b.Fatalf("%d streams need as many descriptors in this process and the client process: the limit is %d (ulimit -n)", streams, lim.Cur)
	}
	inst := ctltest.Start(b, ctltest.Options{Spec: []byte(spec.String()), Listeners: (streams + 19_999) / 20_000,
		HeldStreams: held, PingEvery: 15 * time.Second})
	var tokens []string
	for i := range counts {
		tokens = append(tokens, inst.Token(b, api.CreateTokenRequest{Cluster: fmt.Sprintf("r%d/c%d", i/10, i%10), Uses: size + 1}))
	}
	clients := ctltest.StartStreamClients(b, "TestWatchStreamsChild", ctltest.StreamClientsConfig{
		URLs: inst.URLs, Tokens: tokens, Counts: counts, Prefix: "n", Joiner: "joiner", Workers: 16})
	expect := func(word string, within time.Duration) []string { return clients.Expect(b, word, within) }
	start := time.Now()
	expect("ENROLLED", 30*time.Minute)
	b.Logf("%d nodes enrolled in %s", streams, time.Since(start).Round(time.Millisecond))
	before := controllerMem()
	writeHeapProfile(b, mode, "before")
	start = time.Now()
	clients.Send("OPEN %d", inst.Controller.Revision())
	expect("READY", 30*time.Minute)
	b.Logf("%d streams opened in %s", streams, time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // let the handshakes' garbage go
	after := controllerMem()
	writeHeapProfile(b, mode, "after")
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(streams) }
	memo := per(after.heap+after.stack, before.heap+before.stack) / 1024
	rss := per(after.rss, before.rss) / 1024
	gor := per(uint64(after.goroutines), uint64(before.goroutines))
	b.Logf("per stream: heap+stack %.1f KiB, RSS %.1f KiB, %.2f goroutines", memo, rss, gor)
	b.Logf("controller process: heap %.1f→%.1f MiB, stacks %.1f→%.1f MiB, RSS %.1f→%.1f MiB, goroutines %d→%d",
		mib(before.heap), mib(after.heap), mib(before.stack), mib(after.stack), mib(before.rss), mib(after.rss), before.goroutines, after.goroutines)

	b.ResetTimer()
	t0 := time.Now()
	clients.Send("JOIN %d", t0.UnixNano())
	k, _ := netmap.GeneratePrivateKey()
	if _, err := apiclient.Enroll(context.Background(), inst.URL, tokens[0], api.EnrollRequest{Name: "joiner", Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.2:51820"}); err != nil {
		b.Fatal(err)
	}
	got := ctltest.Arrivals(expect("RESULT", 2*time.Minute))
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	p50, p99, pmax := got[len(got)/2], got[len(got)*99/100], got[len(got)-1]
	ctl := inst.Controller.LastFrameWritten().Sub(t0)
	// (ReportMetric after ResetTimer: it clears them.)
	b.ReportMetric(memo, "heap+stack-KiB/stream")
	b.ReportMetric(rss, "rss-KiB/stream")
	b.ReportMetric(gor, "goroutines/stream")
	b.ReportMetric(ms(p50), "e2e-p50-ms")
	b.ReportMetric(ms(p99), "e2e-p99-ms")
	b.ReportMetric(ms(pmax), "e2e-max-ms")
	b.ReportMetric(float64(ctl.Microseconds())/1000, "ctl-last-write-ms")
	b.Logf("join to the %d streams of its cluster: p50 %.1f ms p99 %.1f ms max %.1f ms; controller wrote the last frame after %s",
		counts[0], ms(p50), ms(p99), ms(pmax), ctl.Round(time.Microsecond))
}

// writeHeapProfile writes STATEMESH_BENCH_HEAPPROFILE-MODE-WHEN.pprof
// when that is set (see where a stream's bytes go with
// go tool pprof -diff_base ...-before.pprof ...-after.pprof).
func writeHeapProfile(b *testing.B, mode, when string) {
	prefix := os.Getenv("STATEMESH_BENCH_HEAPPROFILE")
	if prefix == "" {
		return
	}
	f, err := os.Create(fmt.Sprintf("%s-%s-%s.pprof", prefix, mode, when))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

func mib(v uint64) float64 { return float64(v) / (1 << 20) }

type procMem struct {
	heap, stack, rss uint64
	goroutines       int
}

func controllerMem() procMem {
	runtime.GC()
	debug.FreeOSMemory() // RSS: what is free goes back to the OS
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := procMem{heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
	if st, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(st), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				m.rss = kb << 10
			}
		}
	}
	return m
}

// TestWatchStreamsChild is the client process of BenchmarkWatchStreams
// (it does nothing unless started by it).
func TestWatchStreamsChild(t *testing.T) {
	if !ctltest.RunStreamClients(t) {
		t.Skip("the client process of BenchmarkWatchStreams")
	}
}
