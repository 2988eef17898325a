package controller

import (
	"testing"
	"time"
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
