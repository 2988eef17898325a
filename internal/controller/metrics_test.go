package controller

import (
	"context"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store/bolt"
)

// TestMetricsScrape scrapes a controller with a node, a gateway and
// status reports: the documented series are there, and a collector
// mistake (a panic the library turns into HTTP 500) fails the test.
func TestMetricsScrape(t *testing.T) {
	st, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := New(Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Bootstrap(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	<-c.Ready()
	spec, _ := os.ReadFile("../../examples/small.yaml")
	if _, err := c.ApplySpec(ctx, spec); err != nil {
		t.Fatal(err)
	}
	enroll := func(req api.CreateTokenRequest, name, role string) {
		tok, err := c.CreateToken(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := netmap.GeneratePrivateKey()
		if _, err := c.Enroll(ctx, api.EnrollRequest{Token: tok.Secret, Name: name, Role: role, PublicKey: k.PublicKey(), CSR: csr(t), Endpoint: "192.0.2.1:51820"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	enroll(api.CreateTokenRequest{Cluster: "eu-central/prod"}, "n0", "node")
	enroll(api.CreateTokenRequest{Region: "eu-central", Role: "gateway"}, "gw0", "gateway")
	// A refused enrollment counts under its code.
	k, _ := netmap.GeneratePrivateKey()
	c.Enroll(ctx, api.EnrollRequest{Token: "bogus", Name: "n9", Role: "node", PublicKey: k.PublicKey(), CSR: csr(t)}, nil)
	for _, n := range []string{"n0", "gw0"} {
		if err := c.ReportStatus(ctx, n, api.StatusReport{Healthy: true, AppliedRevision: 1}); err != nil {
			t.Fatal(err)
		}
	}
	rec := httptest.NewRecorder()
	c.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d\n%s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	for _, want := range []string{
		`statemesh_nodes{class="weak",cluster="prod",region="eu-central",role="node",state="active"} 1`,
		`statemesh_nodes{class="weak",cluster="",region="eu-central",role="gateway",state="active"} 1`,
		`statemesh_enrollments_total{result="ok"} 2`,
		`statemesh_enrollments_total{result="token_invalid"} 1`,
		`statemesh_gateway_designated_clusters{gateway="gw0",region="eu-central"} 2`,
		"statemesh_watch_streams 0", "statemesh_registry_revision", "statemesh_nodes_behind 0",
		`statemesh_store_operation_seconds_count{op="update",result="ok"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}
