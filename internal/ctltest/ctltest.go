// Package ctltest runs a real controller with its HTTPS server on loopback
// for tests and benchmarks of other packages.
package ctltest

import (
	"cmp"
	"context"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmakersync"
	"github.com/statemesh/statemesh/internal/server"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
)

// Instance is a running controller.
type Instance struct {
	Controller *controller.Controller
	Store      store.Store
	URL        string
	URLs       []string // every port the server listens on; URL is the first
	Admin      *apiclient.Client
	AdminCfg   api.AdminConfig
	Cancel     context.CancelFunc
	done       chan struct{} // the server stopped
	ran        chan struct{} // the controller's Run returned
}

// Options configure Start.
type Options struct {
	// Store defaults to a bbolt store in t.TempDir.
	Store  store.Store
	Config controller.Config
	// Spec is applied at start when set.
	Spec []byte
	// Netmaker, when set, runs a Netmaker sync beside the controller (as
	// the controller command does); Store and Logger are filled in.
	Netmaker *netmakersync.Config
	// Listeners is the number of loopback ports the server listens on
	// (default 1; Instance.URLs): one client address reaches ~28,000
	// connections to one port.
	Listeners int
	// HeldStreams serves watch streams the way before detached streams
	// (server.Config.HeldStreams).
	HeldStreams bool
	// PingEvery is the watch keepalive interval (default 1s).
	PingEvery time.Duration
	// Logger defaults to t.Logf at warn level (set STATEMESH_TEST_LOG=debug
	// for everything).
	Logger *slog.Logger
}

type tlog struct{ t testing.TB }

func (w tlog) Write(p []byte) (int, error) { w.t.Logf("%s", p); return len(p), nil }

// Start runs a controller and its server until the test ends.
func Start(t testing.TB, opts Options) *Instance {
	t.Helper()
	if opts.Store == nil {
		s, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		opts.Store = s
		t.Cleanup(func() { s.Close() })
	}
	if opts.Logger == nil {
		level := slog.LevelWarn
		if os.Getenv("STATEMESH_TEST_LOG") == "debug" {
			level = slog.LevelDebug
		}
		opts.Logger = slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: level}))
	}
	cfg := opts.Config
	cfg.Store = opts.Store
	cfg.Logger = opts.Logger
	c, err := controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	admin, err := c.Bootstrap(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	var ls []net.Listener
	var urls []string
	for range max(1, opts.Listeners) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		urls = append(urls, "https://"+l.Addr().String())
	}
	l := ls[0]
	if len(ls) > 1 {
		l = newFanIn(ls)
	}
	inst := &Instance{Controller: c, Store: opts.Store, URL: urls[0], URLs: urls, Cancel: cancel, done: make(chan struct{}), ran: make(chan struct{})}
	srv := server.New(server.Config{Controller: c, Logger: opts.Logger, PingEvery: cmp.Or(opts.PingEvery, time.Second), HeldStreams: opts.HeldStreams})
	go func() {
		c.Run(ctx)
		close(inst.ran)
	}()
	go func() {
		srv.Serve(ctx, l)
		close(inst.done)
	}()
	t.Cleanup(inst.Stop)
	<-c.Ready()
	inst.AdminCfg = api.AdminConfig{Server: inst.URL, CA: c.CA().CertPEM(), Token: admin}
	if admin != "" {
		if inst.Admin, err = apiclient.NewAdmin(inst.AdminCfg); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Spec != nil {
		if _, err := c.ApplySpec(ctx, opts.Spec); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Netmaker != nil {
		nm := *opts.Netmaker
		nm.Store, nm.Logger = opts.Store, opts.Logger
		go netmakersync.New(c, nm).Run(ctx)
	}
	return inst
}

// Stop stops the controller and its server (a replica going down; its
// store stays open for the next Start) and waits for both to end.
func (i *Instance) Stop() {
	i.Cancel()
	<-i.done
	<-i.ran
}

// Token creates a join token.
func (i *Instance) Token(t testing.TB, req api.CreateTokenRequest) string {
	t.Helper()
	tok, err := i.Controller.CreateToken(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Secret
}

// fanIn accepts on several listeners as one.
type fanIn struct {
	ls    []net.Listener
	conns chan net.Conn
	errs  chan error
}

func newFanIn(ls []net.Listener) *fanIn {
	f := &fanIn{ls: ls, conns: make(chan net.Conn), errs: make(chan error, len(ls))}
	for _, l := range ls {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					f.errs <- err
					return
				}
				f.conns <- c
			}
		}()
	}
	return f
}

func (f *fanIn) Accept() (net.Conn, error) {
	select {
	case c := <-f.conns:
		return c, nil
	case err := <-f.errs:
		return nil, err
	}
}

func (f *fanIn) Close() error {
	for _, l := range f.ls {
		l.Close()
	}
	return nil
}

func (f *fanIn) Addr() net.Addr { return f.ls[0].Addr() }
