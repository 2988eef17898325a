// Package ctltest runs a real controller with its HTTPS server on loopback
// for tests and benchmarks of other packages.
package ctltest

import (
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
	Admin      *apiclient.Client
	AdminCfg   api.AdminConfig
	Cancel     context.CancelFunc
	done       chan struct{}
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inst := &Instance{Controller: c, Store: opts.Store, URL: "https://" + l.Addr().String(), Cancel: cancel, done: make(chan struct{})}
	srv := server.New(server.Config{Controller: c, Logger: opts.Logger, PingEvery: time.Second})
	go c.Run(ctx)
	go func() {
		srv.Serve(ctx, l)
		close(inst.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-inst.done
	})
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

// Token creates a join token.
func (i *Instance) Token(t testing.TB, req api.CreateTokenRequest) string {
	t.Helper()
	tok, err := i.Controller.CreateToken(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Secret
}
