package controller

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
	"github.com/statemesh/statemesh/internal/topology"
)

// The registry's slot table answers as the slot records it replaces did.
func TestSlotTableFreeAsRecords(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	grace := 10 * time.Minute
	records := map[int]SlotRecord{
		0: {Node: "held"},
		2: {Node: "just-released", ReleasedAt: now.Add(-time.Minute)},
		3: {Node: "released-long-ago", ReleasedAt: now.Add(-time.Hour)},
		4: {Node: "released-at-the-grace", ReleasedAt: now.Add(-grace)},
		6: {Node: "released-before-1970", ReleasedAt: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	var tab slotTable
	for n, r := range records {
		tab = tab.set(n, slotState(r))
	}
	tab = tab.set(maxSlot, slotHeld) // out of range: not kept
	tab = tab.set(-1, slotHeld)
	for n := -1; n < 10; n++ {
		r, ok := records[n]
		want := !ok || r.free(now, grace)
		if got := tab.free(n, now, grace); got != want {
			t.Errorf("slot %d (%+v): free %v, want %v", n, r, got, want)
		}
	}
	tab.set(0, slotAbsent)
	if !tab.free(0, now, grace) {
		t.Error("slot 0 still held after its record was deleted")
	}
	if len(tab) != 7 {
		t.Errorf("table of %d slots, want 7", len(tab))
	}
}

// A slot record read as held without encoding/json is one encoding/json
// reads as held.
func TestSlotHeldFast(t *testing.T) {
	for _, b := range []string{
		`{"node":"eu-central-c01-n0001"}`, `{"node":""}`, `{"node":"a\"b"}`, `{"node":"a\u0041"}`, `{"node":"a","releasedAt":"2026-01-01T00:00:00Z"}`,
		`{"node":"a"} `, ` {"node":"a"}`, "{\"node\":\"a\x01\"}", `{"node":"a"}}`, `{"node":"a"`, `{"node":"ü"}`,
	} {
		s, err := decode[SlotRecord]([]byte(b))
		want := err == nil && slotState(s) == slotHeld
		if got := slotHeldFast([]byte(b)); got && !want {
			t.Errorf("%s: read as held, encoding/json says %+v, %v", b, s, err)
		}
	}
	if !slotHeldFast([]byte(`{"node":"eu-central-c01-n0001"}`)) {
		t.Error("what enrollment writes is not read as held")
	}
}

// slotTableKey splits slot keys as parseSlotKey does.
func TestSlotTableKey(t *testing.T) {
	for _, k := range []string{"slots/r/c/12", "slots/r/_gateways/0", "slots/r/c/x", "slots/r/c", "slots/r/c/d/1", "slots//c/1",
		"slots/r//1", "slots/r/c/", "slots/r/c/-1", "nodes/r/c/1", "slots/r/c/+1", "slots/r/c/1/"} {
		region, cluster, n, ok := parseSlotKey(k)
		ck, gn, gok := slotTableKey(k)
		if gok != ok || (ok && (ck != region+"/"+cluster || gn != n)) {
			t.Errorf("%s: slotTableKey %q %d %v, parseSlotKey %q %q %d %v", k, ck, gn, gok, region, cluster, n, ok)
		}
	}
}

// Every stream's cached topology entry is the index's current one (or nil
// once its node is gone) through updates, removals, re-enrollments and a
// reload, so publishing without a lookup by name delivers what a lookup
// would.
func TestStreamsFollowTheirNodes(t *testing.T) {
	data, p := designLimit(t)
	pj, _ := json.Marshal(p)
	kvs := []store.KV{{Key: keySpec, Value: encode(SpecRecord{YAML: string(data)})}, {Key: keyPlan, Value: pj}}
	var recs []*NodeRecord
	designLimitNodes(p, 600, func(n *NodeRecord, s SlotRecord) {
		recs = append(recs, n)
		kvs = append(kvs, store.KV{Key: nodeKey(n.Name), Value: encode(n)}, store.KV{Key: slotKey(n.Region, n.Cluster, n.Slot), Value: encode(s)})
	})
	st, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := New(Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loadLocked(kvs)
	c.setRevLocked(1)
	for _, r := range recs[:300] {
		n, _ := c.ix.Node(r.Name)
		c.hub.subscribe(n)
	}
	check := func(what string) {
		t.Helper()
		for name, s := range c.hub.subs {
			n, _ := c.ix.Node(name)
			if s.node != n {
				t.Fatalf("%s: stream of %s holds %p, the index %p", what, name, s.node, n)
			}
		}
	}
	check("subscribed")
	rev := int64(1)
	for i, r := range recs[:300] {
		rev++
		switch i % 4 {
		case 0: // quarantined
			q := *r
			q.State, q.Reason = topology.StateQuarantined, "test"
			c.applyLocked(nodeKey(r.Name), encode(q), false, rev)
		case 1: // removed
			c.applyLocked(nodeKey(r.Name), nil, true, rev)
		case 2: // removed and enrolled again
			c.applyLocked(nodeKey(r.Name), nil, true, rev)
			rev++
			c.applyLocked(nodeKey(r.Name), encode(r), false, rev)
		case 3: // moved to another cluster
			m := *r
			m.Cluster = recs[i+1].Cluster
			c.applyLocked(nodeKey(r.Name), encode(m), false, rev)
		}
		check(fmt.Sprintf("change %d", i))
	}
	c.mu.Unlock()
	c.reload(kvs, rev+1)
	c.mu.Lock()
	check("reloaded")
}
