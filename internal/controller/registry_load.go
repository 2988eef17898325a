package controller

import (
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unique"

	"github.com/statemesh/statemesh/internal/store"
)

// loadLocked builds the registry from the whole store: at start, and after
// the store compacted past the watch. Node records, nearly every key at
// scale, are decoded on every core and indexed in bulk (topology.Load);
// the other keys are applied one by one, as the watch would.
func (c *Controller) loadLocked(kvs []store.KV) {
	var nodeKVs []int32
	for i, kv := range kvs {
		if strings.HasPrefix(kv.Key, prefixNodes) {
			nodeKVs = append(nodeKVs, int32(i))
			continue
		}
		if c.mapRevs.set(kv.Key, kv.ModRev) {
			continue
		}
		c.applyLocked(kv.Key, kv.Value, false, 0)
	}
	if len(c.nodes) == 0 {
		c.nodes = make(map[string]*NodeRecord, len(nodeKVs))
	}
	recs, errs := decodeNodes(kvs, nodeKVs)
	loaded := make([]*NodeRecord, 0, len(nodeKVs))
	for i, ki := range nodeKVs {
		key := kvs[ki].Key
		if errs[i] != nil {
			c.log.Error("undecodable node record", "key", key, "err", errs[i])
			continue
		}
		n := &recs[i/decodeChunk][i%decodeChunk]
		name := strings.TrimPrefix(key, prefixNodes)
		if n.Name == name {
			name = n.Name // one copy of the name, not two
		}
		c.nodes[name] = n
		loaded = append(loaded, n)
	}
	if len(loaded) == len(c.nodes) {
		// The same records in the store's order: faster to walk than the
		// map, and the index comes out the same.
		c.rebuildIndexFromLocked(loaded)
		return
	}
	c.rebuildIndexLocked()
}

// decodeChunk is how many node records a decoding worker takes at once;
// the records of a chunk share one allocation.
const decodeChunk = 1024

// decodeNodes decodes the node records kvs[idx[i]] on every core: record
// i is recs[i/decodeChunk][i%decodeChunk] unless errs[i] is set.
func decodeNodes(kvs []store.KV, idx []int32) (recs [][]NodeRecord, errs []error) {
	chunks := (len(idx) + decodeChunk - 1) / decodeChunk
	recs = make([][]NodeRecord, chunks)
	errs = make([]error, len(idx))
	next := make(chan int, chunks)
	for i := range chunks {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), max(chunks, 1)) {
		wg.Go(func() {
			strs := nodeStrings{}
			for ch := range next {
				lo, hi := ch*decodeChunk, min((ch+1)*decodeChunk, len(idx))
				out := make([]NodeRecord, hi-lo)
				for i := lo; i < hi; i++ {
					errs[i] = decodeNodeWith(&out[i-lo], kvs[idx[i]].Value, strs)
				}
				recs[ch] = out
			}
		})
	}
	wg.Wait()
	return recs, errs
}

// decodeNode decodes a node record, its repeated strings interned: a
// million nodes share a few hundred regions, clusters, roles, classes,
// states and tokens, so one copy of each, not one per node.
func decodeNode(b []byte) (NodeRecord, error) {
	var n NodeRecord
	err := decodeNodeWith(&n, b, nil)
	return n, err
}

// slotTableKey splits slots/<region>/<cluster>/<n> as parseSlotKey does,
// returning the registry's key of the cluster's slot table (region/cluster,
// region/ for the gateways) without allocating: a substring of key.
func slotTableKey(key string) (ck string, n int, ok bool) {
	rest, ok := strings.CutPrefix(key, prefixSlots)
	if !ok {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(rest[i+1:])
	if err != nil {
		return "", 0, false
	}
	ck = rest[:i]
	j := strings.IndexByte(ck, '/')
	if j < 0 || strings.IndexByte(ck[j+1:], '/') >= 0 {
		return "", 0, false
	}
	if ck[j+1:] == gatewaysSlots {
		ck = ck[:j+1]
	}
	return ck, n, true
}

// slotHeldFast reports whether a slot record is exactly what enrollment
// writes for a held slot ({"node":"<name>"}, the name without escapes),
// which encoding/json would decode to a held slot too.
func slotHeldFast(b []byte) bool {
	const pre, post = `{"node":"`, `"}`
	if len(b) < len(pre)+len(post) || string(b[:len(pre)]) != pre || string(b[len(b)-len(post):]) != post {
		return false
	}
	for _, c := range b[len(pre) : len(b)-len(post)] {
		if c < 0x20 || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func intern(s string) string {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}

// slotTable is a cluster's address slots as the registry knows them,
// indexed by slot number: slotAbsent (no record), slotHeld, or the time
// the slot was released (Unix nanoseconds). Slots are allocated lowest
// first, so the table is dense: 8 bytes a node. The registry only proposes
// candidates (the store transaction decides), so slots beyond maxSlot,
// which no cluster can have, are not kept.
type slotTable []int64

const (
	slotAbsent = 0
	slotHeld   = -1
	maxSlot    = 1 << 20
)

// slotState is a slot record as the table keeps it.
func slotState(s SlotRecord) int64 {
	if s.ReleasedAt.IsZero() {
		return slotHeld
	}
	return max(s.ReleasedAt.UnixNano(), 1)
}

// set records slot n's state, growing the table as needed.
func (t slotTable) set(n int, state int64) slotTable {
	if n < 0 || n >= maxSlot {
		return t
	}
	if n >= len(t) {
		if state == slotAbsent {
			return t
		}
		t = append(t, make([]int64, n+1-len(t))...)
	}
	t[n] = state
	return t
}

// free reports whether slot n may be allocated at now: no record, or
// released at least grace ago (SlotRecord.free).
func (t slotTable) free(n int, now time.Time, grace time.Duration) bool {
	if n < 0 || n >= len(t) || t[n] == slotAbsent {
		return true
	}
	if t[n] == slotHeld {
		return false
	}
	return now.Sub(time.Unix(0, t[n])) >= grace
}
