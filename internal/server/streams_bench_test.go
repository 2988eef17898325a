package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// streamChild is what the parent tells the client process.
type streamChild struct {
	URLs    []string `json:"urls"`
	Tokens  []string `json:"tokens"` // per cluster
	Counts  []int    `json:"counts"` // streams per cluster
	Workers int      `json:"workers"`
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
	spec.WriteString("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: streams}\naddressing: {podIPv6: [\"fd00:10::/48\"]}\nregions:\n  - name: r\n    clusters:\n")
	for i := range counts {
		fmt.Fprintf(&spec, "      - {name: c%d, maxNodes: %d}\n", i, size)
	}
	inst := ctltest.Start(b, ctltest.Options{Spec: []byte(spec.String()), Listeners: (streams + 19_999) / 20_000,
		HeldStreams: held, PingEvery: 15 * time.Second})
	cfg := streamChild{URLs: inst.URLs, Counts: counts, Workers: 16}
	for i := range counts {
		cfg.Tokens = append(cfg.Tokens, inst.Token(b, api.CreateTokenRequest{Cluster: fmt.Sprintf("r/c%d", i), Uses: size + 1}))
	}
	js, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^TestWatchStreamsChild$", "-test.v")
	cmd.Env = append(os.Environ(), "STATEMESH_STREAM_CHILD="+string(js))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	lines := bufio.NewScanner(stdout)
	expect := func(prefix string, within time.Duration) []string {
		got := make(chan []string, 1)
		go func() {
			for lines.Scan() {
				if f := strings.Fields(lines.Text()); len(f) > 0 && f[0] == prefix {
					got <- f[1:]
					return
				}
			}
			got <- nil
		}()
		select {
		case f := <-got:
			if f == nil {
				b.Fatalf("client process ended before %s", prefix)
			}
			return f
		case <-time.After(within):
			b.Fatalf("client process: no %s within %s", prefix, within)
		}
		return nil
	}
	start := time.Now()
	expect("ENROLLED", 30*time.Minute)
	b.Logf("%d nodes enrolled in %s", streams, time.Since(start).Round(time.Millisecond))
	before := controllerMem()
	writeHeapProfile(b, mode, "before")
	start = time.Now()
	fmt.Fprintf(stdin, "OPEN %d\n", inst.Controller.Revision())
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
	fmt.Fprintf(stdin, "JOIN %d\n", t0.UnixNano())
	k, _ := netmap.GeneratePrivateKey()
	if _, err := apiclient.Enroll(context.Background(), inst.URL, cfg.Tokens[0], api.EnrollRequest{Name: "joiner", Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.2:51820"}); err != nil {
		b.Fatal(err)
	}
	res := expect("RESULT", 2*time.Minute)
	b.StopTimer()
	ms := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v / 1e6 }
	ctl := inst.Controller.LastFrameWritten().Sub(t0)
	// (ReportMetric after ResetTimer: it clears them.)
	b.ReportMetric(memo, "heap+stack-KiB/stream")
	b.ReportMetric(rss, "rss-KiB/stream")
	b.ReportMetric(gor, "goroutines/stream")
	b.ReportMetric(ms(res[0]), "e2e-p50-ms")
	b.ReportMetric(ms(res[1]), "e2e-p99-ms")
	b.ReportMetric(ms(res[2]), "e2e-max-ms")
	b.ReportMetric(float64(ctl.Microseconds())/1000, "ctl-last-write-ms")
	b.Logf("join to the %d streams of its cluster: p50 %.1f ms p99 %.1f ms max %.1f ms; controller wrote the last frame after %s",
		counts[0], ms(res[0]), ms(res[1]), ms(res[2]), ctl.Round(time.Microsecond))
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
// (it does nothing unless started by it): it enrolls the nodes, opens
// their streams when told, and times the join's arrival.
func TestWatchStreamsChild(t *testing.T) {
	js := os.Getenv("STATEMESH_STREAM_CHILD")
	if js == "" {
		t.Skip("the client process of BenchmarkWatchStreams")
	}
	var cfg streamChild
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		t.Fatal(err)
	}
	type node struct {
		id      *apiclient.Identity
		cluster int
	}
	var nodes []node
	for c, n := range cfg.Counts {
		for range n {
			nodes = append(nodes, node{cluster: c})
		}
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	sem := make(chan struct{}, cfg.Workers)
	for i := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			url := cfg.URLs[i%len(cfg.URLs)]
			k, _ := netmap.GeneratePrivateKey()
			for try := 0; ; try++ {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				id, err := apiclient.Enroll(ctx, url, cfg.Tokens[nodes[i].cluster], api.EnrollRequest{
					Name: fmt.Sprintf("n%d-%06d", nodes[i].cluster, i), Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"})
				cancel()
				if err == nil {
					id.Server = url
					nodes[i].id = id
					return
				}
				if try == 5 {
					fmt.Fprintf(os.Stderr, "enrolling node %d: %v\n", i, err)
					failed.Add(1)
					return
				}
				time.Sleep(time.Second)
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d enrollments failed", failed.Load())
	}
	fmt.Println("ENROLLED")
	in := bufio.NewScanner(os.Stdin)
	var rev int64
	for in.Scan() {
		if f := strings.Fields(in.Text()); len(f) == 2 && f[0] == "OPEN" {
			rev, _ = strconv.ParseInt(f[1], 10, 64)
			break
		}
	}
	var t0 atomic.Int64
	arrived := make([]time.Duration, cfg.Counts[0])
	var got sync.WaitGroup
	got.Add(cfg.Counts[0])
	ready := make(chan struct{}, len(nodes))
	opening := make(chan struct{}, 64) // streams being opened at once
	for i, n := range nodes {
		c, err := n.id.Client()
		if err != nil {
			t.Fatal(err)
		}
		opening <- struct{}{}
		go func() {
			opened, seen := false, false
			for {
				err := c.Watch(context.Background(), rev, func(f api.Frame) error {
					if !opened {
						opened = true
						<-opening
						ready <- struct{}{}
					}
					if !seen && n.cluster == 0 && f.Type == api.FrameDelta && f.Delta != nil && slices.ContainsFunc(f.Delta.Upsert, func(p netmap.Peer) bool { return p.Name == "joiner" }) {
						seen = true
						arrived[i] = time.Since(time.Unix(0, t0.Load()))
						got.Done()
					}
					return nil
				})
				if !opened {
					fmt.Fprintf(os.Stderr, "stream %d: %v (retrying)\n", i, err)
					time.Sleep(time.Second)
					continue
				}
				fmt.Fprintf(os.Stderr, "stream %d ended: %v\n", i, err)
				return
			}
		}()
	}
	for range nodes {
		<-ready
	}
	fmt.Println("READY")
	for in.Scan() {
		if f := strings.Fields(in.Text()); len(f) == 2 && f[0] == "JOIN" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			t0.Store(v)
			break
		}
	}
	got.Wait()
	slices.Sort(arrived)
	fmt.Printf("RESULT %d %d %d\n", arrived[len(arrived)/2], arrived[len(arrived)*99/100], arrived[len(arrived)-1])
	io.Copy(io.Discard, os.Stdin) // until the parent is done
}
