package agent

import (
	"testing"
	"time"
)

// TestBFDReportedAtStart: a session Down since BIRD started is reported
// as starting (no vote that the peer is down) in the first bfdStartGrace;
// one seen up that went down, or still down after the grace, is Down.
func TestBFDReportedAtStart(t *testing.T) {
	for _, tc := range []struct {
		state  string
		seenUp bool
		since  time.Duration
		want   string
	}{
		{"Down", false, time.Second, "Starting"},
		{"Down", true, time.Second, "Down"},
		{"Down", false, bfdStartGrace, "Down"},
		{"Up", false, time.Second, "Up"},
		{"Init", false, time.Second, "Init"},
		{"Down", true, time.Hour, "Down"},
	} {
		if got := bfdReported(tc.state, tc.seenUp, tc.since); got != tc.want {
			t.Errorf("bfdReported(%q, seen up %v, %s) = %q, want %q", tc.state, tc.seenUp, tc.since, got, tc.want)
		}
	}
}
