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
