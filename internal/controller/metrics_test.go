package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
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
		`statemesh_watch_resumes_total{result="current"} 0`, `statemesh_watch_resumes_total{result="snapshot"} 0`,
		"statemesh_map_changes_unmarked_total 0",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}

// TestErrCodeStoreOverload: refusals because the store is unavailable,
// overloaded or slow count (statemesh_enrollments_total, the audit log)
// as `unavailable`, as the API answers them, not `internal`.
func TestErrCodeStoreOverload(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("enrolling: %w", store.ErrUnavailable):     api.CodeUnavailable,
		fmt.Errorf("enrolling: %w", context.DeadlineExceeded): api.CodeUnavailable,
		fmt.Errorf("enrolling: %w", store.ErrConflict):        api.CodeUnavailable,
		apiErr(api.CodeTokenInvalid, "bogus"):                 api.CodeTokenInvalid,
		errors.New("boom"):                                    api.CodeInternal,
		nil:                                                   "ok",
	} {
		if got := errCode(err); got != want {
			t.Errorf("errCode(%v) = %q, want %q", err, got, want)
		}
	}
}
