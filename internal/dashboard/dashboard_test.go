package dashboard_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/ctltest"
	"github.com/statemesh/statemesh/internal/dashboard"
	"github.com/statemesh/statemesh/internal/dashboard/browser"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

func csr(t *testing.T, name string) string {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// simulated enrolls gateways and nodes of examples/small.yaml through the
// controller, reports their status (with path probes, one of them below
// the planned MTU), quarantines a node and fails a gateway.
func simulated(t *testing.T) (*ctltest.Instance, func(names ...string)) {
	spec, err := os.ReadFile("../../examples/small.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inst := ctltest.Start(t, ctltest.Options{Spec: spec})
	c := inst.Controller
	ctx := context.Background()
	enroll := func(req api.CreateTokenRequest, name, role string) {
		k, _ := netmap.GeneratePrivateKey()
		if _, err := c.Enroll(ctx, api.EnrollRequest{Token: inst.Token(t, req), Name: name, Role: role, PublicKey: k.PublicKey(), CSR: csr(t, name), Endpoint: "192.0.2.1:51820"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []string{"eu-central", "us-east"} {
		for _, g := range []string{"gw1", "gw2"} {
			enroll(api.CreateTokenRequest{Region: r, Role: "gateway"}, r+"-"+g, "gateway")
		}
	}
	nodes := map[string]string{"eu-central-prod-n1": "eu-central/prod", "eu-central-prod-n2": "eu-central/prod", "eu-central-staging-n1": "eu-central/staging", "us-east-prod-n1": "us-east/prod"}
	for n, cl := range nodes {
		enroll(api.CreateTokenRequest{Cluster: cl}, n, "node")
	}
	now := time.Now()
	probe := func(peer, region string, rtt float64, mtu int) api.PathProbe {
		return api.PathProbe{Peer: peer, Region: region, RTTMillis: rtt, PathMTU: mtu, PlannedMTU: 1440, At: now}
	}
	reports := map[string][]api.PathProbe{
		"eu-central-gw1":     {probe("us-east-gw1", "us-east", 81.5, 1440), probe("us-east-gw2", "us-east", 82.0, 1328)},
		"us-east-gw1":        {probe("eu-central-gw1", "eu-central", 81.0, 1440)},
		"eu-central-prod-n1": {probe("eu-central-gw1", "eu-central", 0.4, 1440)},
	}
	report := func(names ...string) {
		for _, n := range names {
			r := api.StatusReport{Healthy: true, Peers: 5, AppliedRevision: c.Revision(), Firewall: "enforced", Paths: reports[n], Time: time.Now()}
			if n == "eu-central-prod-n2" {
				r.StalePeers = []string{"eu-central-gw2"}
			}
			if err := c.ReportStatus(ctx, n, r); err != nil {
				t.Error(err)
			}
		}
	}
	report("eu-central-gw1", "eu-central-gw2", "us-east-gw1", "us-east-gw2", "eu-central-prod-n1", "eu-central-prod-n2", "us-east-prod-n1")
	if _, err := inst.Admin.Quarantine(ctx, "eu-central-staging-n1"); err != nil {
		t.Fatal(err)
	}
	return inst, report
}

func TestDashboardInChromium(t *testing.T) {
	bin, err := browser.Find()
	if err != nil {
		if testenv.InCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	inst, report := simulated(t)
	// The other gateways keep reporting (every 500 ms, as gateways do
	// every second); us-east-gw2 stops: the controller marks it unhealthy
	// and moves its cluster.
	ctx, stop := context.WithCancel(context.Background())
	beating := make(chan struct{})
	go func() {
		defer close(beating)
		for ctx.Err() == nil {
			report("eu-central-gw1", "eu-central-gw2", "us-east-gw1")
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { stop(); <-beating })
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := inst.Admin.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if gatewayHealthy(st, "us-east-gw2") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("us-east-gw2 still healthy: %+v", st.Regions)
		}
		time.Sleep(300 * time.Millisecond)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: dashboard.Local(inst.Admin.ReadOnlyProxy(l.Addr().String()))}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	base := "http://" + l.Addr().String() + "/"

	dom, err := browser.DOM(ctx, bin, base+"#node=eu-central-gw1", browser.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		// topology: regions, gateways with health, clusters, nodes by name
		`data-region="eu-central"`, `data-region="us-east"`,
		`class="gw healthy" data-gateway="eu-central-gw1"`, `class="gw unhealthy" data-gateway="us-east-gw2"`,
		`data-cluster="eu-central/prod"`, `data-cluster="eu-central/staging"`, `data-cluster="us-east/prod"`,
		`data-node-label="eu-central-prod-n1"`, `data-node-label="us-east-prod-n1"`,
		`class="node quarantined" cx=`, `class="node weak stale"`,
		// designated links: us-east/prod moved to the healthy gateway
		`data-link="us-east-gw1&gt;prod"`,
		// header, latency matrix, attention, events
		"mesh small", "81.0 · 1440", "82.0 · 1328",
		"quarantined: eu-central-staging-n1", "stale handshakes on: eu-central-prod-n2", "below the planned MTU",
		"us-east: 1 of 2 gateways healthy", "failover",
		// node detail from the fragment: class, evidence, paths, peers
		"no TPM evidence (admitted as weak)", "probed gateway", "1328 / 1440", "WireGuard peers (",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}

	dir := os.Getenv("STATEMESH_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "dashboard-simulated.png")
	if err := browser.Screenshot(ctx, bin, base+"#node=eu-central-gw1", shot, browser.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)
}

func gatewayHealthy(st api.Status, name string) int {
	for _, r := range st.Regions {
		for _, g := range r.Gateways {
			if g.Name == name && g.Healthy {
				return 1
			}
		}
	}
	return 0
}

// The controller serves the same page at /ui/; its data calls need the
// admin token like every admin call.
func TestControllerServesDashboard(t *testing.T) {
	inst := ctltest.Start(t, ctltest.Options{})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsFor(t, inst)}}
	get := func(path string) (int, string) {
		resp, err := hc.Get(inst.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/ui/"); code != 200 || !strings.Contains(body, `<script src="app.js">`) {
		t.Errorf("/ui/: %d %.200s", code, body)
	}
	if code, body := get("/ui/app.js"); code != 200 || !strings.Contains(body, "/v1/status") {
		t.Errorf("/ui/app.js: %d", code)
	}
	if code, _ := get("/v1/status"); code != http.StatusUnauthorized {
		t.Errorf("/v1/status without the token: %d, want 401", code)
	}
	if u := inst.Admin.DashboardURL(); !strings.HasPrefix(u, inst.URL+"/ui/#token=") {
		t.Errorf("dashboard URL %q", u)
	}
}

func TestProxyOnlyReads(t *testing.T) {
	inst := ctltest.Start(t, ctltest.Options{})
	ts := httptest.NewServer(dashboard.Local(inst.Admin.ReadOnlyProxy("")))
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET through the proxy: %d", resp.StatusCode)
	}
	for _, tc := range []struct{ method, path, host string }{
		{"DELETE", "/v1/nodes/x", ""},
		{"PUT", "/v1/spec", ""},
		{"GET", "/v1/status", "evil.example:80"}, // DNS rebinding
	} {
		req, _ := http.NewRequest(tc.method, ts.URL+tc.path, nil)
		if tc.host != "" {
			req.Host = tc.host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("%s %s (host %q) passed the proxy: %d", tc.method, tc.path, tc.host, resp.StatusCode)
		}
	}
}

func tlsFor(t *testing.T, inst *ctltest.Instance) *tls.Config {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(inst.AdminCfg.CA)) {
		t.Fatal("no CA")
	}
	return &tls.Config{RootCAs: pool}
}
