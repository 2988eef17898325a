package server_test

import (
	"context"
	"errors"
	"fmt"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/ctltest"
	"github.com/statemesh/statemesh/internal/netmap"
)

const streamsSpec = `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: streams}
addressing: {podIPv6: ["fd00:10::/48"]}
regions:
  - name: r
    clusters: [{name: c, maxNodes: 100}]
`

func enrollN(t *testing.T, inst *ctltest.Instance, tok string, n int, prefix string) []*apiclient.Identity {
	t.Helper()
	var ids []*apiclient.Identity
	for i := range n {
		k, _ := netmap.GeneratePrivateKey()
		id, err := apiclient.Enroll(context.Background(), inst.URL, tok, api.EnrollRequest{
			Name: fmt.Sprintf("%s%02d", prefix, i), Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// frames is a stream's frames as its client decoded them.
type frames struct {
	mu   sync.Mutex
	got  []api.Frame
	done chan error
}

func (f *frames) all() []api.Frame {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.Frame(nil), f.got...)
}

func (f *frames) waitFor(t *testing.T, what string, ok func(api.Frame) bool) api.Frame {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, fr := range f.all() {
			if ok(fr) {
				return fr
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s among %d frames", what, len(f.all()))
	return api.Frame{}
}

func stream(t *testing.T, ctx context.Context, id *apiclient.Identity, from int64) *frames {
	c, err := id.Client()
	if err != nil {
		t.Fatal(err)
	}
	f := &frames{done: make(chan error, 1)}
	go func() {
		f.done <- c.Watch(ctx, from, func(fr api.Frame) error {
			f.mu.Lock()
			f.got = append(f.got, fr)
			f.mu.Unlock()
			return nil
		})
	}()
	return f
}

func upserts(name string) func(api.Frame) bool {
	return func(f api.Frame) bool {
		if f.Type != api.FrameDelta || f.Delta == nil {
			return false
		}
		for _, p := range f.Delta.Upsert {
			if p.Name == name {
				return true
			}
		}
		return false
	}
}

// goroutinesIn counts goroutines with fn in their stack.
func goroutinesIn(fn string) int {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	n := 0
	for _, rec := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(rec, fn) {
			var count int
			fmt.Sscanf(rec, "%d @", &count)
			n += count
		}
	}
	return n
}

// TestDetachedStreamsHoldNoGoroutine: 20 open watch streams keep no HTTP
// connection goroutine on the server (they are written by the shared
// writers), where held streams keep one each; both deliver a join.
func TestDetachedStreamsHoldNoGoroutine(t *testing.T) {
	for _, held := range []bool{false, true} {
		t.Run(fmt.Sprintf("held=%v", held), func(t *testing.T) {
			inst := ctltest.Start(t, ctltest.Options{Spec: []byte(streamsSpec), HeldStreams: held})
			tok := inst.Token(t, api.CreateTokenRequest{Cluster: "r/c", Uses: 30})
			ids := enrollN(t, inst, tok, 20, "n")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var fs []*frames
			for _, id := range ids {
				fs = append(fs, stream(t, ctx, id, 0))
			}
			for _, f := range fs {
				f.waitFor(t, "snapshot", func(fr api.Frame) bool { return fr.Type == api.FrameSnapshot })
			}
			enrollN(t, inst, tok, 1, "joiner")
			for _, f := range fs {
				f.waitFor(t, "join delta", upserts("joiner00"))
			}
			if got := inst.Controller.Streams(); got != 20 {
				t.Fatalf("%d streams open, want 20", got)
			}
			// (Enrollments leave a few idle keep-alive connections.)
			conns, watches := goroutinesIn("net/http.(*conn).serve"), goroutinesIn("controller.(*Controller).Watch")
			if held && (conns < 20 || watches != 20) {
				t.Fatalf("held streams: %d connection goroutines and %d watching, want ≥ 20 and 20 (the count is broken)", conns, watches)
			}
			if !held && (conns > 5 || watches != 0) {
				t.Fatalf("detached streams: %d connection goroutines and %d watching, want ≤ 5 (idle enrollment connections) and 0", conns, watches)
			}
		})
	}
}

// TestDetachedStreamLifecycle: a detached stream pings, ends when its
// client leaves (noticed at a ping, with no reader), resumes from a
// revision with only the missed deltas, and ends when its node is removed.
func TestDetachedStreamLifecycle(t *testing.T) {
	inst := ctltest.Start(t, ctltest.Options{Spec: []byte(streamsSpec)}) // pings every second
	tok := inst.Token(t, api.CreateTokenRequest{Cluster: "r/c", Uses: 30})
	ids := enrollN(t, inst, tok, 2, "n")
	ctx, cancel := context.WithCancel(context.Background())
	f := stream(t, ctx, ids[0], 0)
	snap := f.waitFor(t, "snapshot", func(fr api.Frame) bool { return fr.Type == api.FrameSnapshot })
	if len(snap.Map.Peers) != 1 || snap.Map.Peers[0].Name != "n01" {
		t.Fatalf("snapshot peers %v, want n01", snap.Map.Peers)
	}
	enrollN(t, inst, tok, 1, "a")
	joined := f.waitFor(t, "join delta", upserts("a00"))
	f.waitFor(t, "ping", func(fr api.Frame) bool { return fr.Type == api.FramePing && fr.Revision >= joined.Revision })

	// The client leaves: the server notices within a few pings.
	cancel()
	<-f.done
	deadline := time.Now().Add(5 * time.Second)
	for inst.Controller.Streams() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still open 5s after their client left", inst.Controller.Streams())
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Missed while away: b joins. Resuming sends its delta, no snapshot.
	enrollN(t, inst, tok, 1, "b")
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	f = stream(t, ctx, ids[0], joined.Revision)
	f.waitFor(t, "missed join delta", upserts("b00"))
	for _, fr := range f.all() {
		if fr.Type == api.FrameSnapshot {
			t.Fatalf("resumed from revision %d with a snapshot", joined.Revision)
		}
	}

	// Removed: the stream ends.
	if err := inst.Admin.RemoveNode(context.Background(), "n00"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-f.done:
		if errors.Is(err, context.Canceled) {
			t.Fatalf("stream ended by the test, not the server: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the removed node's stream is still open")
	}
}
