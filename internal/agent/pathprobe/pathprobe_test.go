package pathprobe

import "testing"

func TestSearch(t *testing.T) {
	for _, pmtu := range []int{1440, 1340, 1000, 577, 576} {
		calls := 0
		got := Search(MinMTU, 1440, func(n int) bool { calls++; return n <= pmtu })
		if got != pmtu {
			t.Errorf("path MTU %d: found %d", pmtu, got)
		}
		if calls > 12 {
			t.Errorf("path MTU %d: %d probes, want O(log)", pmtu, calls)
		}
	}
	if got := Search(MinMTU, 1440, func(int) bool { return false }); got != 0 {
		t.Errorf("nothing crosses: %d", got)
	}
	if got := Search(MinMTU, 1440, func(n int) bool { return n == 1440 }); got != 1440 {
		t.Errorf("full size first: %d", got)
	}
}
