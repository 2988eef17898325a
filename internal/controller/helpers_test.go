package controller

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store/bolt"
)

// runSmall runs a controller with cfg (on a fresh bbolt store unless cfg
// has one) with examples/small.yaml applied, until the test ends.
func runSmall(t *testing.T, cfg Config) (*Controller, context.Context) {
	t.Helper()
	return runSpec(t, cfg, "../../examples/small.yaml")
}

// runSpec is runSmall with another spec.
func runSpec(t *testing.T, cfg Config, specPath string) (*Controller, context.Context) {
	t.Helper()
	if cfg.Store == nil {
		st, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		cfg.Store = st
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := c.Bootstrap(ctx, "t"); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-c.Ready()
	spec, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ApplySpec(ctx, spec); err != nil {
		t.Fatal(err)
	}
	return c, ctx
}

// enroll enrolls node name with a new token of req.
func enroll(t *testing.T, ctx context.Context, c *Controller, req api.CreateTokenRequest, name, role string) {
	t.Helper()
	tok, err := c.CreateToken(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := netmap.GeneratePrivateKey()
	if _, err := c.Enroll(ctx, api.EnrollRequest{Token: tok.Secret, Name: name, Role: role, PublicKey: k.PublicKey(), CSR: csr(t), Endpoint: "192.0.2.1:51820"}, nil); err != nil {
		t.Fatal(err)
	}
}

// gatewayPair is two gateways of eu-central, gw0 and gw1, enrolled on c
// and healthy (enrollGatewayPair).
type gatewayPair struct {
	t   *testing.T
	ctx context.Context
	c   *Controller
}

func enrollGatewayPair(t *testing.T, ctx context.Context, c *Controller) gatewayPair {
	t.Helper()
	for _, name := range []string{"gw0", "gw1"} {
		enroll(t, ctx, c, api.CreateTokenRequest{Region: "eu-central", Role: "gateway"}, name, "gateway")
	}
	p := gatewayPair{t, ctx, c}
	// Both reach the other regions: both healthy.
	for _, name := range []string{"gw0", "gw1"} {
		p.report(name, api.WANReach{Probed: 2, Reached: 2})
	}
	p.waitHealth("gw0", true)
	p.waitHealth("gw1", true)
	return p
}

// report sends gateway name's status report (its heartbeat) with its WAN
// reach.
func (p gatewayPair) report(name string, wan api.WANReach) {
	p.t.Helper()
	if err := p.c.ReportStatus(p.ctx, name, api.StatusReport{Healthy: true, AppliedRevision: 1, WAN: &wan}); err != nil {
		p.t.Fatal(err)
	}
}

// waitHealth waits up to 3 s for gateway name's health record to say
// healthy, and returns it.
func (p gatewayPair) waitHealth(name string, healthy bool) HealthRecord {
	p.t.Helper()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		p.c.mu.RLock()
		h := p.c.health[name]
		p.c.mu.RUnlock()
		if h.Healthy == healthy {
			return h
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: health %+v, want healthy=%v", name, h, healthy)
		}
	}
}
