package agent

import (
	"strings"
	"testing"
	"time"
)

// The reach tracker's hysteresis: cut only after a silence of CutAfter,
// back only after answers for RecoverAfter; a lossy or intermittent link
// does not flap.
func TestReachHysteresis(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	peers := []string{"us-gw1", "us-gw2"}
	r := newReachTracker(t0)
	ms := time.Millisecond

	// Nothing answered yet, just started: not cut until the start grace.
	if st, _ := r.update(peers, at(0)); st.Cut || st.Probed != 2 {
		t.Fatalf("cut before it had time to hear back: %+v", st)
	}
	if st, _ := r.update(peers, at(5*time.Second)); st.Cut {
		t.Fatalf("cut 5 s after start without ever hearing back (handshakes take time): %+v", st)
	}
	if st, _ := newReachTracker(t0).update(peers, at(reachStartGrace)); st.Cut {
		t.Fatalf("judged at the first look: %+v", st)
	}
	never := newReachTracker(t0)
	never.update(peers, t0)
	if st, _ := never.update(peers, at(reachStartGrace)); !st.Cut {
		t.Fatalf("a gateway that never heard back after the start grace is not cut: %+v", st)
	}
	r.observe("us-gw1", true, at(600*ms))
	if st, _ := r.update(peers, at(700*ms)); st.Cut || st.Reached != 1 {
		t.Fatalf("one answer: %+v", st)
	}
	// A lossy link: one answer in every second, never CutAfter of silence.
	for i := 1; i <= 10; i++ {
		now := at(600*ms + time.Duration(i)*time.Second)
		r.observe("us-gw2", true, now)
		if st, changed := r.update(peers, now.Add(900*ms)); st.Cut || changed {
			t.Fatalf("a link answering once a second read as cut at %d: %+v", i, st)
		}
	}
	// Silence: cut once CutAfter passed since the last answer.
	last := at(10600 * ms)
	if st, _ := r.update(peers, last.Add(reachCutAfter-ms)); st.Cut {
		t.Fatalf("cut before CutAfter of silence: %+v", st)
	}
	st, changed := r.update(peers, last.Add(reachCutAfter))
	if !st.Cut || !changed || st.Reached != 0 {
		t.Fatalf("silent for CutAfter, not cut: %+v changed=%v", st, changed)
	}
	// Intermittent recovery: answers, then a silence before RecoverAfter:
	// still cut.
	now := last.Add(2 * time.Second)
	r.observe("us-gw1", true, now)
	if st, _ := r.update(peers, now); !st.Cut {
		t.Fatal("one answer ended the cut")
	}
	now = now.Add(reachCutAfter + 100*ms) // silent again
	if st, _ := r.update(peers, now); !st.Cut {
		t.Fatal("cut ended during a new silence")
	}
	// Answers for RecoverAfter without a silence: back.
	start := now
	for d := time.Duration(0); d <= reachRecoverAfter; d += 250 * ms {
		r.observe("us-gw1", true, start.Add(d))
		st, changed = r.update(peers, start.Add(d))
	}
	if st.Cut || !changed {
		t.Fatalf("answers for RecoverAfter did not end the cut: %+v", st)
	}
	// No remote gateways: never cut.
	if st, _ := r.update(nil, now.Add(time.Hour)); st.Cut || st.Probed != 0 {
		t.Fatalf("no peers: %+v", st)
	}
}

// How many remote gateways a round echoes: few while answers come, many
// when in doubt, so that the quiet cost is low and a cut is still
// confirmed against many gateways within CutAfter.
func TestReachTargetsPerRound(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := time.Millisecond
	peers := []string{"a", "b", "c"}
	r := newReachTracker(t0)
	r.update(peers, t0)
	if n := r.targets(t0); n != maxReachTargets {
		t.Fatalf("never heard back: %d targets a round, want %d", n, maxReachTargets)
	}
	r.observe("a", true, t0.Add(100*ms))
	if n := r.targets(t0.Add(300 * ms)); n != reachQuietTargets {
		t.Fatalf("answers coming: %d targets a round, want %d", n, reachQuietTargets)
	}
	if n := r.targets(t0.Add(100*ms + reachDoubtAfter)); n != maxReachTargets {
		t.Fatalf("silent for reachDoubtAfter: %d targets a round, want %d", n, maxReachTargets)
	}
	// Doubt starts early enough that CutAfter sees at least three full
	// rounds of it.
	if rounds := (reachCutAfter - reachDoubtAfter) / reachEvery; rounds < 3 {
		t.Fatalf("only %d rounds in doubt before a cut", rounds)
	}
	// An answer that arrives out of order does not move the last answer back.
	r.observe("b", true, t0.Add(50*ms))
	if n := r.targets(t0.Add(300 * ms)); n != reachQuietTargets {
		t.Fatalf("an older answer counted as the latest: %d targets", n)
	}
	// Cut: many a round, to see its end.
	r.cut = true
	if n := r.targets(t0.Add(200 * ms)); n != maxReachTargets {
		t.Fatalf("cut: %d targets a round, want %d", n, maxReachTargets)
	}
}

// The rotation visits every remote gateway in turn, never one twice in a
// round, and survives the list shrinking under its cursor.
func TestPickTargetsRotates(t *testing.T) {
	peers := []string{"a", "b", "c", "d", "e"}
	var seen []string
	cursor := 0
	for range 5 {
		var got []string
		got, cursor = pickTargets(peers, cursor, 1)
		seen = append(seen, got...)
	}
	if strings.Join(seen, "") != "abcde" {
		t.Fatalf("one a round visits %v, want every peer once in order", seen)
	}
	got, cursor := pickTargets(peers, 3, 8)
	if strings.Join(got, "") != "deabc" || cursor != 3 {
		t.Fatalf("8 of 5 from 3: %v, cursor %d; want deabc, 3", got, cursor)
	}
	got, _ = pickTargets(peers[:2], 4, 1) // shrank under the cursor
	if len(got) != 1 {
		t.Fatalf("after the list shrank: %v", got)
	}
	if got, c := pickTargets([]string(nil), 7, 8); got != nil || c != 0 {
		t.Fatalf("no peers: %v, %d", got, c)
	}
}
