package agent

import (
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
