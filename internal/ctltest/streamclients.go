package ctltest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/netmap"
)

// StreamClientsConfig is what a process of stream clients does: enroll
// Counts[i] nodes with Tokens[i] (spread over URLs), then, when told,
// open every node's watch stream and time the arrival of Joiner's delta
// at the streams of cluster 0.
type StreamClientsConfig struct {
	URLs    []string `json:"urls"`
	Tokens  []string `json:"tokens"`
	Counts  []int    `json:"counts"`
	Prefix  string   `json:"prefix"` // of node names, unique per process
	Joiner  string   `json:"joiner"`
	Workers int      `json:"workers"` // concurrent enrollments
}

const streamClientsEnv = "STATEMESH_STREAM_CLIENTS"

// StreamClients is a child process (the test binary re-executed) holding
// watch streams, so that what they cost is not in the controller's
// process.
type StreamClients struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan []string
}

// StartStreamClients runs the test binary's test named test, which must
// call RunStreamClients, as a client process.
func StartStreamClients(tb testing.TB, test string, cfg StreamClientsConfig) *StreamClients {
	tb.Helper()
	js, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.v", "-test.timeout=2h")
	cmd.Env = append(os.Environ(), streamClientsEnv+"="+string(js))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	s := &StreamClients{cmd: cmd, stdin: stdin, lines: make(chan []string, 16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) > 0 && strings.ToUpper(f[0]) == f[0] {
				s.lines <- f
			}
		}
		close(s.lines)
	}()
	tb.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return s
}

// Expect waits for the process's line starting with word and returns the
// rest of it.
func (s *StreamClients) Expect(tb testing.TB, word string, within time.Duration) []string {
	tb.Helper()
	timeout := time.After(within)
	for {
		select {
		case f, ok := <-s.lines:
			if !ok {
				tb.Fatalf("client process ended before %s", word)
			}
			if f[0] == word {
				return f[1:]
			}
		case <-timeout:
			tb.Fatalf("client process: no %s within %s", word, within)
		}
	}
}

// Send tells the process a line (OPEN revision, JOIN unix-nanoseconds).
func (s *StreamClients) Send(format string, args ...any) {
	fmt.Fprintf(s.stdin, format+"\n", args...)
}

// Arrivals parses a RESULT line: the delays, sorted.
func Arrivals(f []string) []time.Duration {
	var out []time.Duration
	for _, v := range f {
		n, _ := strconv.ParseInt(v, 10, 64)
		out = append(out, time.Duration(n))
	}
	slices.Sort(out)
	return out
}

// RunStreamClients is the client process's side: it does nothing (and
// returns false) unless started by StartStreamClients. It prints ENROLLED,
// waits for OPEN rev, opens every stream resuming from rev and prints
// READY once each has a first frame, waits for JOIN t0, and prints
// RESULT with the delay from t0 to each of cluster 0's streams decoding
// the joiner's delta.
func RunStreamClients(t *testing.T) bool {
	js := os.Getenv(streamClientsEnv)
	if js == "" {
		return false
	}
	var cfg StreamClientsConfig
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
	sem := make(chan struct{}, max(1, cfg.Workers))
	for i := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			url := cfg.URLs[i%len(cfg.URLs)]
			k, _ := netmap.GeneratePrivateKey()
			// One certificate key for every try: a retry after an answer
			// that was lost (unavailable: committed or not) gets the
			// same enrollment back.
			keyPEM, err := apiclient.NewNodeKey()
			if err != nil {
				panic(err)
			}
			for try := 0; ; try++ {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				id, err := apiclient.EnrollWithKey(ctx, url, cfg.Tokens[nodes[i].cluster], api.EnrollRequest{
					Name: fmt.Sprintf("%s%d-%06d", cfg.Prefix, nodes[i].cluster, i), Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"}, nil, keyPEM)
				cancel()
				if err == nil {
					id.Server = url
					nodes[i].id = id
					return
				}
				if try == 20 { // a loaded store answers unavailable for a while
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
	var mu sync.Mutex
	var arrived []time.Duration
	var got sync.WaitGroup
	got.Add(cfg.Counts[0])
	ready := make(chan struct{}, len(nodes))
	opening := make(chan struct{}, 64) // streams being opened at once
	for _, n := range nodes {
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
					if !seen && n.cluster == 0 && f.Type == api.FrameDelta && f.Delta != nil &&
						slices.ContainsFunc(f.Delta.Upsert, func(p netmap.Peer) bool { return p.Name == cfg.Joiner }) {
						seen = true
						d := time.Since(time.Unix(0, t0.Load()))
						mu.Lock()
						arrived = append(arrived, d)
						mu.Unlock()
						got.Done()
					}
					return nil
				})
				if !opened {
					fmt.Fprintf(os.Stderr, "stream of %s: %v (retrying)\n", n.id.Node.Name, err)
					time.Sleep(time.Second)
					continue
				}
				fmt.Fprintf(os.Stderr, "stream of %s ended: %v\n", n.id.Node.Name, err)
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
	var b strings.Builder
	b.WriteString("RESULT")
	for _, d := range arrived {
		fmt.Fprintf(&b, " %d", d.Nanoseconds())
	}
	fmt.Println(b.String())
	io.Copy(io.Discard, os.Stdin) // until the parent is done
	return true
}
