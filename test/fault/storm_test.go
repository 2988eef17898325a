package fault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/store"
)

// stormSpec is a mesh with one roomy cluster for enrollment storms.
const stormSpec = `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: fault}
addressing:
  overlayIPv4: 100.64.0.0/10
  podIPv4: [10.0.0.0/8]
regions:
  - name: r1
    gateways: 2
    clusters:
      - {name: c1, maxNodes: 4000}
      - {name: c2, maxNodes: 200}
`

// ack is an enrollment the controller acknowledged.
type ack struct {
	name     string
	key      netmap.Key
	overlay  string
	pod      string
	revision int64
	id       *apiclient.Identity
}

// stormNode is one node of a storm: its name and WireGuard key stay the
// same across retries, as a real agent's do.
type stormNode struct {
	name string
	key  netmap.Key
	// certKey is the node's certificate key, kept across retries as the
	// agent keeps it (its proof, after a lost answer, that it is the node
	// the controller enrolled).
	certKey string
}

func stormNodes(t testing.TB, prefix string, n int) []stormNode {
	out := make([]stormNode, n)
	for i := range out {
		k, err := netmap.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		ck, err := apiclient.NewNodeKey()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = stormNode{name: fmt.Sprintf("%s%04d", prefix, i), key: k.PublicKey(), certKey: ck}
	}
	return out
}

// stormResult collects a storm's outcome.
type stormResult struct {
	mu      sync.Mutex
	acked   map[string]ack
	failed  map[string]error
	refused map[string]error // API errors (the controller answered no)
}

func newStormResult() *stormResult {
	return &stormResult{acked: map[string]ack{}, failed: map[string]error{}, refused: map[string]error{}}
}

func (r *stormResult) count() (acked, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.acked), len(r.failed) + len(r.refused)
}

// storm enrolls nodes from `workers` goroutines against urls (round robin
// per worker), recording acknowledgements and failures. onAck runs after
// each acknowledgement (outside the lock).
func storm(ctx context.Context, urls []string, token string, nodes []stormNode, workers int, res *stormResult, onAck func(n int)) {
	work := make(chan stormNode)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range work {
				url := urls[w%len(urls)]
				cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				id, err := apiclient.EnrollWithKey(cctx, url, token, api.EnrollRequest{Name: n.name, Role: "node", PublicKey: n.key, Endpoint: "192.0.2.1:51820"}, nil, n.certKey)
				cancel()
				res.mu.Lock()
				var ae *api.Error
				switch {
				case err == nil:
					res.acked[n.name] = ack{name: n.name, key: n.key, overlay: id.Node.OverlayIPv4, pod: id.Node.PodIPv4, revision: id.Revision, id: id}
					delete(res.failed, n.name)
					delete(res.refused, n.name)
				case errors.As(err, &ae):
					res.refused[n.name] = err
				default:
					res.failed[n.name] = err
				}
				total := len(res.acked)
				res.mu.Unlock()
				if err == nil && onAck != nil {
					onAck(total)
				}
			}
		}()
	}
	for _, n := range nodes {
		select {
		case work <- n:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
}

// checkRecords decodes every record of a store snapshot and checks the
// registry's invariants: every acknowledged enrollment is present with its
// key and addresses, no address or slot is held twice, every node has its
// slot and every held slot its node, and each token's use count equals the
// nodes enrolled with it. It returns the nodes found.
func checkRecords(t testing.TB, kvs []store.KV, acked map[string]ack) map[string]controller.NodeRecord {
	t.Helper()
	strict := func(kv store.KV, v any) bool {
		dec := json.NewDecoder(bytes.NewReader(kv.Value))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			t.Errorf("half-written or corrupt record %s (%d bytes): %v", kv.Key, len(kv.Value), err)
			return false
		}
		return true
	}
	nodes := map[string]controller.NodeRecord{}
	slots := map[string]controller.SlotRecord{}
	tokens := map[string]controller.TokenRecord{}
	for _, kv := range kvs {
		switch {
		case kv.Key == "spec":
			var r controller.SpecRecord
			strict(kv, &r)
		case kv.Key == "plan":
			if _, err := plan.Decode(kv.Value); err != nil {
				t.Errorf("plan record corrupt: %v", err)
			}
		case strings.HasPrefix(kv.Key, "nodes/"):
			var n controller.NodeRecord
			if strict(kv, &n) {
				if n.Name != strings.TrimPrefix(kv.Key, "nodes/") || n.PublicKey.IsZero() || !n.OverlayIPv4.IsValid() || n.CertSerial.IsZero() {
					t.Errorf("node record %s is incomplete: %+v", kv.Key, n)
				}
				nodes[n.Name] = n
			}
		case strings.HasPrefix(kv.Key, "slots/"):
			var s controller.SlotRecord
			if strict(kv, &s) {
				slots[kv.Key] = s
			}
		case strings.HasPrefix(kv.Key, "tokens/"):
			var tr controller.TokenRecord
			if strict(kv, &tr) {
				tokens[tr.ID] = tr
			}
		case strings.HasPrefix(kv.Key, "health/"):
			var h controller.HealthRecord
			strict(kv, &h)
		case kv.Key == "pki/ca":
			var r controller.CARecord
			strict(kv, &r)
		}
	}
	for name, a := range acked {
		n, ok := nodes[name]
		if !ok {
			t.Errorf("LOST: enrollment of %s was acknowledged (revision %d, %s) but the node is not in the store", name, a.revision, a.overlay)
			continue
		}
		if n.PublicKey != a.key || n.OverlayIPv4.String() != a.overlay || (a.pod != "" && n.PodIPv4.String() != a.pod) {
			t.Errorf("CHANGED: %s was acknowledged with key %s, overlay %s, pods %s; the store holds %s, %s, %s", name, a.key, a.overlay, a.pod, n.PublicKey, n.OverlayIPv4, n.PodIPv4)
		}
	}
	byAddr := map[string]string{}
	used := map[string]int{}
	for _, n := range sortedNodes(nodes) {
		for _, addr := range []string{n.OverlayIPv4.String(), n.PodIPv4.String()} {
			if addr == "invalid IP" || addr == "invalid Prefix" {
				continue
			}
			if other, dup := byAddr[addr]; dup {
				t.Errorf("DOUBLE ALLOCATION: %s is held by %s and %s", addr, other, n.Name)
			}
			byAddr[addr] = n.Name
		}
		cluster := n.Cluster
		if cluster == "" {
			cluster = "_gateways"
		}
		sk := fmt.Sprintf("slots/%s/%s/%d", n.Region, cluster, n.Slot)
		if s, ok := slots[sk]; !ok || s.Node != n.Name || !s.ReleasedAt.IsZero() {
			t.Errorf("node %s holds slot %s but the slot record is %+v (present %v)", n.Name, sk, s, ok)
		}
		used[n.TokenID]++
	}
	for k, s := range slots {
		if _, ok := nodes[s.Node]; !ok && s.ReleasedAt.IsZero() {
			t.Errorf("slot %s is held for %s, which is not enrolled (a half-done enrollment)", k, s.Node)
		}
	}
	for id, tr := range tokens {
		if tr.Used != used[id] {
			t.Errorf("token %s counts %d uses but %d nodes were enrolled with it", id, tr.Used, used[id])
		}
	}
	return nodes
}

func sortedNodes(m map[string]controller.NodeRecord) []controller.NodeRecord {
	out := make([]controller.NodeRecord, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// checkRevisions checks that every acknowledged enrollment got its own
// revision (one transaction each) and that the store is past all of them.
func checkRevisions(t testing.TB, acked map[string]ack, storeRev int64) {
	t.Helper()
	seen := map[int64]string{}
	for name, a := range acked {
		if a.revision <= 0 {
			t.Errorf("enrollment of %s acknowledged without a revision", name)
			continue
		}
		if other, dup := seen[a.revision]; dup {
			t.Errorf("REVISION REUSED: %s and %s were both acknowledged at revision %d", name, other, a.revision)
		}
		seen[a.revision] = name
		if a.revision > storeRev {
			t.Errorf("REVISION WENT BACK: %s was acknowledged at revision %d but the store is at %d after the restart", name, a.revision, storeRev)
		}
	}
}

func maxRevision(acked map[string]ack) int64 {
	var m int64
	for _, a := range acked {
		m = max(m, a.revision)
	}
	return m
}
