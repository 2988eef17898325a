package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestRateLimiterPerSource(t *testing.T) {
	now := time.Unix(1000, 0)
	r := newRateLimiter(2, 3, Limits{MaxSources: 2}, func() time.Time { return now })
	for i := range 3 {
		if ok, _ := r.allow("192.0.2.1:1000"); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, wait := r.allow("192.0.2.1:1001")
	if ok || wait < 400*time.Millisecond || wait > 600*time.Millisecond {
		t.Errorf("4th request: allowed %v, wait %s (want refused, ~0.5 s at 2/s)", ok, wait)
	}
	// Another source keeps its service; an IPv6 /64 is one source.
	if ok, _ := r.allow("[2001:db8::1]:1"); !ok {
		t.Error("a second source was refused for the first one's flood")
	}
	r.allow("[2001:db8::2]:1")
	r.allow("[2001:db8::3]:1")
	if ok, _ := r.allow("[2001:db8::4]:1"); ok {
		t.Error("addresses of one /64 are limited together: the 4th in a burst of 3 should be refused")
	}
	// Time refills.
	now = now.Add(time.Second)
	if ok, _ := r.allow("192.0.2.1:1002"); !ok {
		t.Error("no refill after a second")
	}
	// Loopback is exempt unless asked.
	for range 10 {
		if ok, _ := r.allow("127.0.0.1:5"); !ok {
			t.Fatal("loopback limited by default")
		}
	}
	// The table is bounded: a third source shares the overflow bucket.
	r.allow("198.51.100.9:1")
	if n := r.sources(); n > 2 {
		t.Errorf("%d sources tracked, bound 2", n)
	}
}

func TestEnrollFloodGets429(t *testing.T) {
	s := &Server{cfg: Config{Limits: Limits{UnauthRate: 1, UnauthBurst: 2, LimitLoopback: true}}}
	s.cfg.Limits.setDefaults()
	s.limiter = newRateLimiter(s.cfg.Limits.UnauthRate, s.cfg.Limits.UnauthBurst, s.cfg.Limits, nil)
	h := s.limitUnauth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) }))
	codes := []int{}
	for range 4 {
		req := httptest.NewRequest("POST", "/v1/enroll", nil)
		req.RemoteAddr = "203.0.113.7:4000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		codes = append(codes, w.Code)
		if w.Code == http.StatusTooManyRequests && (w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "too many unauthenticated requests")) {
			t.Errorf("429 without Retry-After or reason: %v %s", w.Header(), w.Body)
		}
	}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 || codes[3] != 429 {
		t.Errorf("codes %v, want 200 200 429 429", codes)
	}
}
