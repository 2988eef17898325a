package controller

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// TestMetricsScrape scrapes a controller with a node, a gateway and
// status reports: the documented series are there, and a collector
// mistake (a panic the library turns into HTTP 500) fails the test.
func TestMetricsScrape(t *testing.T) {
	c, ctx := runSmall(t, Config{})
	enroll(t, ctx, c, api.CreateTokenRequest{Cluster: "eu-central/prod"}, "n0", "node")
	enroll(t, ctx, c, api.CreateTokenRequest{Region: "eu-central", Role: "gateway"}, "gw0", "gateway")
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
