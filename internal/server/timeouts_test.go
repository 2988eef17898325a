package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/store/bolt"
)

// real is a controller behind Server.Serve on a loopback listener (the
// real timeouts apply, unlike under httptest).
type real struct {
	c     *controller.Controller
	url   string
	addr  string
	pool  *x509.CertPool
	admin *apiclient.Client
}

func serveReal(t *testing.T, scfg Config) *real {
	t.Helper()
	st, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelError}))
	c, err := controller.New(controller.Config{Store: st, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	adminTok, err := c.Bootstrap(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	scfg.Controller, scfg.Logger = c, log
	srv := New(scfg)
	done := make(chan struct{})
	go c.Run(ctx)
	go func() { srv.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-c.Ready()
	if _, err := c.ApplySpec(ctx, mustRead(t, "../../examples/small.yaml")); err != nil {
		t.Fatal(err)
	}
	r := &real{c: c, url: "https://" + l.Addr().String(), addr: l.Addr().String(), pool: c.CA().Pool()}
	if r.admin, err = apiclient.NewAdmin(api.AdminConfig{Server: r.url, CA: c.CA().CertPEM(), Token: adminTok}); err != nil {
		t.Fatal(err)
	}
	return r
}

// clientFrom returns an HTTPS client whose connections come from local
// address src (another loopback address is another source).
func (r *real) clientFrom(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:     d.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: r.pool, MinVersion: tls.VersionTLS13},
	}}
}

// TestEnrollFloodOverTLSOthersServed: over real TLS connections, one
// source (127.0.0.2) floods the unauthenticated endpoints; past its burst
// it gets 429 with Retry-After (before its body is read), while a node
// enrolling from another source (127.0.0.1) during the flood is served.
func TestEnrollFloodOverTLSOthersServed(t *testing.T) {
	r := serveReal(t, Config{Limits: Limits{UnauthRate: 2, UnauthBurst: 5, LimitLoopback: true}})
	flood := r.clientFrom("127.0.0.2")
	var refused, other atomic.Int64
	var wg sync.WaitGroup
	var retryAfter atomic.Value
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := "/v1/enroll"
			if i%2 == 1 {
				path = "/v1/attest/challenge"
			}
			resp, err := flood.Post(r.url+path, "application/json", strings.NewReader(`{"token":"garbage"}`))
			if err != nil {
				t.Errorf("flood request: %v", err)
				return
			}
			defer resp.Body.Close()
			var er api.ErrorResponse
			json.NewDecoder(resp.Body).Decode(&er)
			if resp.StatusCode == http.StatusTooManyRequests && er.Error.Code == api.CodeUnavailable {
				refused.Add(1)
				retryAfter.Store(resp.Header.Get("Retry-After"))
			} else {
				other.Add(1)
			}
		}()
	}
	// A well-behaved node from another address, during the flood.
	tok, err := r.admin.CreateToken(context.Background(), api.CreateTokenRequest{Cluster: "eu-central/prod"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := apiclient.Enroll(ctx, r.url, tok.Secret, api.EnrollRequest{Name: "good", Role: "node", PublicKey: key(t), Endpoint: "192.0.2.1:51820"}); err != nil {
		t.Errorf("a node enrolling from another source during the flood was refused: %v", err)
	}
	wg.Wait()
	if refused.Load() < 90 {
		t.Errorf("FLOOD NOT LIMITED: %d of 100 requests from one source refused with 429 (burst 5, 2/s), %d answered", refused.Load(), other.Load())
	}
	if ra, _ := retryAfter.Load().(string); ra == "" {
		t.Error("429 without Retry-After")
	}
}

// TestSlowAndIdleConnectionsTimeOut: connections that never finish their
// TLS handshake, their headers or their body, and idle keep-alive
// connections, are closed after their timeouts, while other clients are
// served throughout.
func TestSlowAndIdleConnectionsTimeOut(t *testing.T) {
	lim := Limits{HeaderTimeout: 300 * time.Millisecond, IdleTimeout: 500 * time.Millisecond, BodyTimeout: 500 * time.Millisecond}
	r := serveReal(t, Config{Limits: lim})
	tlsDial := func(t *testing.T) *tls.Conn {
		c, err := tls.Dial("tcp", r.addr, &tls.Config{RootCAs: r.pool, MinVersion: tls.VersionTLS13, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closedWithin reads until the server closes the connection.
	closedWithin := func(t *testing.T, c net.Conn, bound time.Duration, what string) string {
		t.Helper()
		start := time.Now()
		c.SetReadDeadline(start.Add(bound + 2*time.Second))
		got, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("SLOW CLIENT KEPT: %s still open after %s (timeout %s)", what, time.Since(start).Round(time.Millisecond), bound)
		}
		return string(got)
	}
	t.Run("no TLS handshake", func(t *testing.T) {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		closedWithin(t, c, lim.HeaderTimeout, "a connection that never started TLS")
	})
	t.Run("headers never finished", func(t *testing.T) {
		c := tlsDial(t)
		io.WriteString(c, "GET /v1/nodes HTTP/1.1\r\nHost: x\r\n")
		closedWithin(t, c, lim.HeaderTimeout, "a request whose headers never ended")
	})
	t.Run("body trickled", func(t *testing.T) {
		c := tlsDial(t)
		io.WriteString(c, "POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"token\":")
		out := closedWithin(t, c, lim.BodyTimeout, "a request whose body never arrived")
		if !strings.Contains(out, "400") || !strings.Contains(out, "not received in time") {
			t.Errorf("answer to a trickled body: %q", out)
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := tlsDial(t)
		io.WriteString(c, "GET /v1/openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		start := time.Now()
		c.SetReadDeadline(start.Add(lim.IdleTimeout + 2*time.Second))
		if _, err := br.ReadByte(); err == nil || (errors.As(err, new(net.Error)) && err.(net.Error).Timeout()) {
			t.Fatalf("IDLE CONNECTION KEPT: open %s after its last response (idle timeout %s): %v", time.Since(start).Round(time.Millisecond), lim.IdleTimeout, err)
		}
	})
	// Meanwhile everyone else is served.
	if _, err := r.admin.Nodes(context.Background(), "", ""); err != nil {
		t.Errorf("a well-behaved client was not served: %v", err)
	}
}
