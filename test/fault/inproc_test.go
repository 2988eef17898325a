package fault_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/server"
	"github.com/statemesh/statemesh/internal/store/bolt"
)

// inproc is a controller and its HTTPS server in this process, with a
// server configuration of the test's choosing (ctltest uses the defaults).
type inproc struct {
	c     *controller.Controller
	url   string
	admin *apiclient.Client
}

type tlog struct{ t testing.TB }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimSpace(string(p)))
	return len(p), nil
}

// smallSendBuffer makes every accepted connection's socket send buffer
// small (16 KiB), as on a constrained path: a reader that stops reading
// then blocks the server's writes after kilobytes, not after the
// megabytes loopback autotuning would allow.
type smallSendBuffer struct{ net.Listener }

func (l smallSendBuffer) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(16 << 10)
	}
	return c, err
}

func startInProc(t testing.TB, ccfg controller.Config, scfg server.Config, spec string) *inproc {
	t.Helper()
	st, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ccfg.Store, ccfg.Logger = st, log
	c, err := controller.New(ccfg)
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
	srv := server.New(scfg)
	done := make(chan struct{})
	go c.Run(ctx)
	go func() { srv.Serve(ctx, smallSendBuffer{l}); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-c.Ready()
	url := "https://" + l.Addr().String()
	admin, err := apiclient.NewAdmin(api.AdminConfig{Server: url, CA: c.CA().CertPEM(), Token: adminTok})
	if err != nil {
		t.Fatal(err)
	}
	if spec != "" {
		if _, err := c.ApplySpec(ctx, []byte(spec)); err != nil {
			t.Fatal(err)
		}
	}
	return &inproc{c: c, url: url, admin: admin}
}

// metric returns the sum of a series' samples from the controller's
// metrics (labels ignored).
func (p *inproc) metric(t testing.TB, name string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	p.c.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	var sum float64
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

func (p *inproc) token(t testing.TB, cluster string, uses int) string {
	t.Helper()
	tok, err := p.c.CreateToken(context.Background(), api.CreateTokenRequest{Cluster: cluster, Uses: uses})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Secret
}

// enrollAll enrolls n nodes with `workers` concurrent clients.
func enrollAll(t testing.TB, url, token, prefix string, n, workers int) []*apiclient.Identity {
	t.Helper()
	ids := make([]*apiclient.Identity, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			k, _ := netmap.GeneratePrivateKey()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			id, err := apiclient.Enroll(ctx, url, token, api.EnrollRequest{Name: fmt.Sprintf("%s%05d", prefix, i), Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"})
			if err != nil {
				errs <- err
				return
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("enrolling: %v", err)
	}
	return ids
}

// peerWatcher follows a node's map and records when each peer appeared.
type peerWatcher struct {
	mu     sync.Mutex
	m      netmap.Map
	seen   map[string]time.Time
	frames int
	snaps  int
	// opens counts the attempts to open the stream: like an agent, the
	// watcher retries (with backoff) until the stream delivers its first
	// frame; once it has, the stream's end is final (done closes).
	opens int
	err   error
	done  chan struct{}
}

func watchPeers(ctx context.Context, t testing.TB, id *apiclient.Identity) *peerWatcher {
	t.Helper()
	c, err := id.Client()
	if err != nil {
		t.Fatal(err)
	}
	w := &peerWatcher{seen: map[string]time.Time{}, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer c.CloseIdle()
		backoff := 100 * time.Millisecond
		for {
			w.mu.Lock()
			w.opens++
			w.mu.Unlock()
			err := c.Watch(ctx, 0, func(f api.Frame) error {
				now := time.Now()
				w.mu.Lock()
				defer w.mu.Unlock()
				w.frames++
				switch f.Type {
				case api.FrameSnapshot:
					w.snaps++
					w.m = *f.Map
				case api.FrameDelta:
					w.m = w.m.Apply(*f.Delta)
				default:
					return nil
				}
				for _, p := range w.m.Peers {
					if _, ok := w.seen[p.Name]; !ok {
						w.seen[p.Name] = now
					}
				}
				return nil
			})
			w.mu.Lock()
			w.err = err
			started := w.frames > 0
			w.mu.Unlock()
			var ae *api.Error
			if started || ctx.Err() != nil || errors.As(err, &ae) && ae.Code == api.CodeUnauthenticated {
				return
			}
			// Not open yet (e.g. a TLS handshake timed out while thousands
			// open at once): retry, as the agent does.
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff + time.Duration(rand.Int64N(int64(backoff)))):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}()
	return w
}

// state describes the watcher for a failure message.
func (w *peerWatcher) state() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%d frames, %d attempts to open the stream, last error: %v", w.frames, w.opens, w.err)
}

func (w *peerWatcher) has(name string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.seen[name]
	return at, ok
}

func (w *peerWatcher) peers() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.m.Peers)
}

// stuckStream opens a node's watch stream over a connection with a tiny
// receive buffer, reads the response headers, and then never reads again.
func stuckStream(t testing.TB, url string, id *apiclient.Identity) net.Conn {
	t.Helper()
	cert, err := tls.X509KeyPair([]byte(id.CertPEM), []byte(id.KeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(id.CA))
	d := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: 5 * time.Second, Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			if err != nil {
				return err
			}
			return serr
		}},
		Config: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, ServerName: "127.0.0.1"},
	}
	host := strings.TrimPrefix(url, "https://")
	conn, err := d.DialContext(context.Background(), "tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /v1/node/map?watch=true HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	br := bufio.NewReaderSize(conn, 512)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, "200") {
		t.Fatalf("stuck stream: %q %v", line, err)
	}
	return conn
}

// percentile returns the p-th percentile of ds (p in [0,1]).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p * float64(len(s)-1))
	return s[i]
}
