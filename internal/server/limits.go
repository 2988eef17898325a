package server

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/statemesh/statemesh/internal/api"
)

// Limits bound what one client can make the server do. The zero value
// gives the defaults below.
//
// Unauthenticated endpoints (enrollment and the enrollment attestation
// challenge) are rate-limited per source: a token bucket per IPv4 address
// or IPv6 /64, so a flood from one place is refused with 429 while other
// sources keep their service. Node calls (client certificate) are limited
// per node the same way, so one node cannot make the controller write
// attestation challenges or status without bound; admin calls are not
// limited.
type Limits struct {
	// UnauthRate is the sustained rate, per source, of unauthenticated
	// requests (default 10/s); UnauthBurst how many may come at once
	// (default 50). A negative rate turns the limit off.
	UnauthRate  float64
	UnauthBurst int
	// NodeRate and NodeBurst are the same per node for node calls
	// (default 10/s, burst 50: an agent makes a few a second at most).
	NodeRate  float64
	NodeBurst int
	// LimitLoopback also limits loopback sources (by default they are
	// exempt: the controller's own host, local tooling and tests).
	LimitLoopback bool
	// MaxSources bounds the sources tracked at once (default 16,384); when
	// full, idle sources are forgotten first, and when none is idle a new
	// source shares one overflow bucket.
	MaxSources int

	// HeaderTimeout bounds reading a request's headers, and the TLS
	// handshake (default 10s); IdleTimeout an idle keep-alive connection
	// (default 2m); BodyTimeout reading a request body (default 30s).
	HeaderTimeout time.Duration
	IdleTimeout   time.Duration
	BodyTimeout   time.Duration
	// StreamWriteTimeout bounds one write to a watch stream (default 60s):
	// a node that stops reading its stream is disconnected after it, which
	// frees its connection and goroutine (its queue is bounded anyway and
	// overflows into a snapshot resync).
	StreamWriteTimeout time.Duration
}

func (l *Limits) setDefaults() {
	if l.UnauthRate == 0 {
		l.UnauthRate = 10
	}
	if l.UnauthBurst <= 0 {
		l.UnauthBurst = 50
	}
	if l.NodeRate == 0 {
		l.NodeRate = 10
	}
	if l.NodeBurst <= 0 {
		l.NodeBurst = 50
	}
	if l.MaxSources <= 0 {
		l.MaxSources = 16384
	}
	if l.HeaderTimeout <= 0 {
		l.HeaderTimeout = 10 * time.Second
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = 2 * time.Minute
	}
	if l.BodyTimeout <= 0 {
		l.BodyTimeout = 30 * time.Second
	}
	if l.StreamWriteTimeout <= 0 {
		l.StreamWriteTimeout = 60 * time.Second
	}
}

// bucket is one source's token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// rateLimiter keeps a token bucket per source.
type rateLimiter struct {
	rate     float64
	burst    float64
	max      int
	loopback bool // limit loopback sources too
	now      func() time.Time

	mu       sync.Mutex
	buckets  map[string]*bucket
	overflow bucket // shared by new sources while the table is full of busy ones
	refused  uint64
}

func newRateLimiter(rate float64, burst int, l Limits, now func() time.Time) *rateLimiter {
	if now == nil {
		now = time.Now
	}
	return &rateLimiter{
		rate: rate, burst: float64(burst), max: l.MaxSources, loopback: l.LimitLoopback, now: now,
		buckets: map[string]*bucket{},
	}
}

// sourceOf returns the limited unit of a remote address: the IPv4
// address, or the IPv6 /64 (one subscriber's allocation).
func sourceOf(remote string) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		host, _, err := net.SplitHostPort(remote)
		if err != nil {
			return netip.Prefix{}, false
		}
		a, err := netip.ParseAddr(host)
		if err != nil {
			return netip.Prefix{}, false
		}
		ap = netip.AddrPortFrom(a, 0)
	}
	a := ap.Addr().Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32), true
	}
	p, _ := a.Prefix(64)
	return p, true
}

// refill brings b up to date at now.
func (r *rateLimiter) refill(b *bucket, now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(r.burst, b.tokens+el*r.rate)
	}
	b.last = now
}

// allow takes a token for the source of remote; when there is none it
// returns how long until there will be.
func (r *rateLimiter) allow(remote string) (bool, time.Duration) {
	if r == nil || r.rate < 0 {
		return true, 0
	}
	src, ok := sourceOf(remote)
	if !ok {
		return true, 0 // not an IP connection (tests over pipes)
	}
	if src.Addr().IsLoopback() && !r.loopback {
		return true, 0
	}
	return r.allowKey(src.String())
}

// allowKey takes a token from key's bucket.
func (r *rateLimiter) allowKey(key string) (bool, time.Duration) {
	if r == nil || r.rate < 0 {
		return true, 0
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.buckets[key]
	if !ok {
		if len(r.buckets) >= r.max {
			r.evictIdle(now)
		}
		if len(r.buckets) >= r.max {
			b = &r.overflow
		} else {
			b = &bucket{tokens: r.burst, last: now}
			r.buckets[key] = b
		}
	}
	r.refill(b, now)
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	r.refused++
	wait := time.Duration((1 - b.tokens) / r.rate * float64(time.Second))
	return false, max(wait, time.Millisecond)
}

// evictIdle forgets sources whose bucket has refilled: they have not been
// limited lately, and a fresh bucket is the same as theirs.
func (r *rateLimiter) evictIdle(now time.Time) {
	for k, b := range r.buckets {
		r.refill(b, now)
		if b.tokens >= r.burst {
			delete(r.buckets, k)
		}
	}
}

// sources returns how many sources are tracked (tests).
func (r *rateLimiter) sources() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets)
}

// limitUnauth refuses an unauthenticated request whose source is over its
// rate, before reading its body.
func (s *Server) limitUnauth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok, wait := s.limiter.allow(r.RemoteAddr)
		if !ok {
			tooMany(w, wait, "too many unauthenticated requests from this address")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// tooMany answers 429 with Retry-After.
func tooMany(w http.ResponseWriter, wait time.Duration, what string) {
	secs := int(math.Ceil(wait.Seconds()))
	w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
	writeJSON(w, http.StatusTooManyRequests, api.ErrorResponse{Error: api.Error{
		Code:    api.CodeUnavailable,
		Message: fmt.Sprintf("%s; retry in %s", what, wait.Round(time.Millisecond)),
	}})
}

// withBodyDeadline bounds reading a request body to BodyTimeout (a client
// that trickles its body is cut off) and lifts the bound afterwards, so a
// slow handler is not mistaken for a slow client. When the bound was hit,
// it stays: the server's discard of the unread body then fails at once and
// the connection is closed after the answer, instead of waiting forever for
// the rest of the body.
func (s *Server) withBodyDeadline(w http.ResponseWriter, read func() error) error {
	rc := http.NewResponseController(w)
	set := rc.SetReadDeadline(time.Now().Add(s.cfg.Limits.BodyTimeout)) == nil
	err := read()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		w.Header().Set("Connection", "close")
		return err
	}
	if set {
		rc.SetReadDeadline(time.Time{})
	}
	return err
}
