package server

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/jointoken"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store/bolt"
)

type harness struct {
	t     testing.TB
	c     *controller.Controller
	st    controller.Store
	url   string
	admin *apiclient.Client
	cfg   api.AdminConfig
	ct    *contract
}

type tlog struct{ t testing.TB }

func (w tlog) Write(p []byte) (int, error) { w.t.Logf("%s", bytes.TrimSpace(p)); return len(p), nil }

func start(t testing.TB, ccfg controller.Config) *harness {
	st, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ccfg.Store = st
	if ccfg.Logger == nil {
		ccfg.Logger = log
	}
	c, err := controller.New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	adminTok, err := c.Bootstrap(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	<-c.Ready()
	srv := New(Config{Controller: c, Logger: log, PingEvery: 200 * time.Millisecond})
	ct := newContract(t)
	ts := httptest.NewUnstartedServer(ct.wrap(srv.Handler()))
	tc, err := srv.TLSConfig([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ts.TLS = tc
	ts.StartTLS()
	t.Cleanup(ts.Close)
	cfg := api.AdminConfig{Server: ts.URL, CA: c.CA().CertPEM(), Token: adminTok}
	admin, err := apiclient.NewAdmin(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, c: c, st: st, url: ts.URL, admin: admin, cfg: cfg, ct: ct}
}

func code(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	if err == nil {
		return "ok"
	}
	return "not an api error: " + err.Error()
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func key(t testing.TB) netmap.Key {
	k, err := netmap.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func (h *harness) enroll(token, name, role string) (*apiclient.Identity, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return apiclient.Enroll(ctx, h.url, token, api.EnrollRequest{Name: name, Role: role, PublicKey: key(h.t), Endpoint: "192.0.2.1:51820"})
}

func (h *harness) token(req api.CreateTokenRequest) string {
	t, err := h.admin.CreateToken(context.Background(), req)
	if err != nil {
		h.t.Fatal(err)
	}
	return t.Secret
}

// watcher collects a node's frames.
type watcher struct {
	mu     sync.Mutex
	m      netmap.Map
	frames []api.Frame
	errc   chan error
	cancel context.CancelFunc
}

func watch(t *testing.T, id *apiclient.Identity) *watcher {
	c, err := id.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{errc: make(chan error, 1), cancel: cancel}
	t.Cleanup(cancel)
	go func() {
		w.errc <- c.Watch(ctx, 0, func(f api.Frame) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.frames = append(w.frames, f)
			switch f.Type {
			case api.FrameSnapshot:
				w.m = *f.Map
			case api.FrameDelta:
				w.m = w.m.Apply(*f.Delta)
			}
			return nil
		})
	}()
	return w
}

func (w *watcher) waitPeers(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		var got []string
		for _, p := range w.m.Peers {
			got = append(got, p.Name)
		}
		w.mu.Unlock()
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAPIEndToEnd(t *testing.T) {
	h := start(t, controller.Config{})
	ctx := context.Background()
	small := mustRead(t, "../../examples/small.yaml")

	if _, err := h.admin.CreateToken(ctx, api.CreateTokenRequest{Cluster: "eu-central/prod"}); code(err) != api.CodeNoSpec {
		t.Errorf("token before spec: %v", err)
	}
	res, err := h.admin.ApplySpec(ctx, small)
	if err != nil || res.Mesh != "small" || res.Clusters != 3 {
		t.Fatalf("apply: %+v %v", res, err)
	}
	// A malformed spec is refused with field paths and leaves the good one.
	_, err = h.admin.ApplySpec(ctx, []byte(strings.Replace(string(small), "maxNodes: 500", "maxNodes: 50000", 1)))
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeSpecInvalid || len(ae.Fields) != 1 || ae.Fields[0].Path != "regions[0].clusters[0].maxNodes" {
		t.Fatalf("bad spec: %v", err)
	}
	if s, _ := h.admin.Spec(ctx); s != string(small) {
		t.Error("a rejected spec replaced the one in force")
	}

	gwTok := h.token(api.CreateTokenRequest{Region: "eu-central", Role: "gateway", Uses: 2})
	nodeTok := h.token(api.CreateTokenRequest{Cluster: "eu-central/prod", Uses: 3})
	gw0, err := h.enroll(gwTok, "gw0", "gateway")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.enroll(gwTok, "gw1", "gateway"); err != nil {
		t.Fatal(err)
	}
	n0, err := h.enroll(nodeTok, "n0", "node")
	if err != nil {
		t.Fatal(err)
	}
	if n0.Node.OverlayIPv4 != "100.64.32.1" || n0.Node.PodIPv4 != "10.0.0.0/25" || n0.Node.Class != "weak" {
		t.Errorf("n0 got %+v", n0.Node)
	}
	if gw0.Node.OverlayIPv4 != "100.64.0.1" {
		t.Errorf("gw0 got %s", gw0.Node.OverlayIPv4)
	}
	n1, err := h.enroll(nodeTok, "n1", "node")
	if err != nil {
		t.Fatal(err)
	}
	w := watch(t, n1)
	w.waitPeers(t, "gw0", "gw1", "n0")
	gww := watch(t, gw0)
	gww.waitPeers(t, "gw1", "n0", "n1")

	// A join reaches the watchers as a delta.
	n2, err := h.enroll(nodeTok, "n2", "node")
	if err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "gw0", "gw1", "n0", "n2")
	gww.waitPeers(t, "gw1", "n0", "n1", "n2")
	w.mu.Lock()
	last := w.frames[len(w.frames)-1]
	w.mu.Unlock()
	if last.Type != api.FrameDelta && last.Type != api.FramePing {
		t.Errorf("join delivered as %s, want a delta", last.Type)
	}

	// Token refusals, each with its own code.
	if _, err := h.enroll(nodeTok, "n3", "node"); code(err) != api.CodeTokenUsedUp {
		t.Errorf("used-up token: %v", err)
	}
	revoked := h.token(api.CreateTokenRequest{Cluster: "eu-central/prod"})
	tok, _ := jointoken.Parse(revoked)
	if err := h.admin.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.enroll(revoked, "n3", "node"); code(err) != api.CodeTokenRevoked {
		t.Errorf("revoked token: %v", err)
	}
	short := h.token(api.CreateTokenRequest{Cluster: "eu-central/prod", TTL: "1ms"})
	time.Sleep(5 * time.Millisecond)
	if _, err := h.enroll(short, "n3", "node"); code(err) != api.CodeTokenExpired {
		t.Errorf("expired token: %v", err)
	}
	wrong := tok
	first := "x"
	if strings.HasPrefix(wrong.Secret, first) {
		first = "y" // a random secret may start with x already
	}
	wrong.Secret = first + wrong.Secret[1:]
	if _, err := h.enroll(wrong.String(), "n3", "node"); code(err) != api.CodeTokenInvalid {
		t.Errorf("wrong secret: %v", err)
	}
	if _, err := h.enroll(h.token(api.CreateTokenRequest{Cluster: "eu-central/prod"}), "n3", "gateway"); code(err) != api.CodePermissionDenied {
		t.Errorf("node token used for a gateway: %v", err)
	}
	if _, err := h.enroll(h.token(api.CreateTokenRequest{Cluster: "eu-central/prod"}), "n0", "node"); code(err) != api.CodeAlreadyExists {
		t.Errorf("duplicate name: %v", err)
	}

	// Admin auth.
	anon, _ := apiclient.NewAdmin(api.AdminConfig{Server: h.url, CA: h.cfg.CA})
	if _, err := anon.Nodes(ctx, "", ""); code(err) != api.CodeUnauthenticated {
		t.Errorf("anonymous admin: %v", err)
	}
	bad, _ := apiclient.NewAdmin(api.AdminConfig{Server: h.url, CA: h.cfg.CA, Token: h.cfg.Token + "x"})
	if _, err := bad.Nodes(ctx, "", ""); code(err) != api.CodeUnauthenticated {
		t.Errorf("wrong admin token: %v", err)
	}
	nodes, err := h.admin.Nodes(ctx, "eu-central", "prod")
	if err != nil || len(nodes) != 3 {
		t.Errorf("nodes of eu-central/prod: %d %v", len(nodes), err)
	}
	regions, err := h.admin.Regions(ctx)
	if err != nil || len(regions[0].Gateways) != 2 {
		t.Fatalf("regions: %+v %v", regions, err)
	}

	// Removal: peers drop the node, and its credentials stop working.
	if err := h.admin.RemoveNode(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "gw0", "gw1", "n0")
	gww.waitPeers(t, "gw1", "n0", "n1")
	n2c, _ := n2.Client()
	if err := n2c.ReportStatus(ctx, api.StatusReport{Healthy: true}); code(err) != api.CodeUnauthenticated {
		t.Errorf("removed node's certificate still works: %v", err)
	}
	// Quarantine: peers drop it too, the node's own map empties.
	qw := watch(t, n0)
	qw.waitPeers(t, "gw0", "gw1", "n1")
	if _, err := h.admin.Quarantine(ctx, "n0"); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "gw0", "gw1")
	qw.waitPeers(t)
	if _, err := h.admin.Release(ctx, "n0"); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "gw0", "gw1", "n0")

	// Oversized bodies are refused.
	big := bytes.Repeat([]byte("#"), api.MaxSpecBytes+10)
	if _, err := h.admin.ApplySpec(ctx, big); code(err) != api.CodeTooLarge {
		t.Errorf("oversized spec: %v", err)
	}
	req, _ := http.NewRequest(http.MethodPost, h.url+"/v1/enroll", strings.NewReader(`{"token": "`+strings.Repeat("a", api.MaxRequestBytes)+`"}`))
	_ = req
	if _, err := apiclient.Enroll(ctx, h.url, nodeTok, api.EnrollRequest{Name: "big", Role: "node", PublicKey: key(t), Endpoint: strings.Repeat("1", api.MaxRequestBytes)}); code(err) != api.CodeTooLarge {
		t.Errorf("oversized enrollment: %v", err)
	}
	// Bad input gets specific errors.
	if _, err := h.enroll(nodeTok, "Bad_Name", "node"); code(err) != api.CodeInvalidArgument {
		t.Errorf("bad name: %v", err)
	}
	if _, err := h.admin.CreateToken(ctx, api.CreateTokenRequest{Cluster: "nowhere/x"}); code(err) != api.CodeNotFound {
		t.Errorf("token for unknown cluster: %v", err)
	}
	if _, err := h.admin.CreateToken(ctx, api.CreateTokenRequest{Cluster: "eu-central/prod", TTL: "forever"}); code(err) != api.CodeInvalidArgument {
		t.Errorf("bad ttl: %v", err)
	}
}

func TestClusterFull(t *testing.T) {
	h := start(t, controller.Config{})
	spec := `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: tiny}
regions:
  - name: r
    clusters: [{name: c, maxNodes: 2}]
`
	if _, err := h.admin.ApplySpec(context.Background(), []byte(spec)); err != nil {
		t.Fatal(err)
	}
	tok := h.token(api.CreateTokenRequest{Cluster: "r/c", Uses: 5})
	for _, n := range []string{"a", "b"} {
		if _, err := h.enroll(tok, n, "node"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.enroll(tok, "c", "node"); code(err) != api.CodeClusterFull {
		t.Fatalf("third node in a 2-node cluster: %v", err)
	}
	// Removal does not free the slot before the grace period.
	if err := h.admin.RemoveNode(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.enroll(tok, "c", "node"); code(err) != api.CodeClusterFull {
		t.Fatalf("slot reused inside the grace period: %v", err)
	}
}

func TestSlotReusedAfterGrace(t *testing.T) {
	h := start(t, controller.Config{SlotGrace: 50 * time.Millisecond})
	spec := "apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: tiny}\nregions:\n  - name: r\n    clusters: [{name: c, maxNodes: 1}]\n"
	if _, err := h.admin.ApplySpec(context.Background(), []byte(spec)); err != nil {
		t.Fatal(err)
	}
	tok := h.token(api.CreateTokenRequest{Cluster: "r/c", Uses: 5})
	a, err := h.enroll(tok, "a", "node")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.admin.RemoveNode(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	b, err := h.enroll(tok, "b", "node")
	if err != nil {
		t.Fatal(err)
	}
	if b.Node.OverlayIPv4 != a.Node.OverlayIPv4 {
		t.Errorf("released slot not reused: %s vs %s", b.Node.OverlayIPv4, a.Node.OverlayIPv4)
	}
}

func TestContractCoversEveryOperation(t *testing.T) {
	// Run the end-to-end test's operations through one contract and check
	// that none in openapi.yaml went untested.
	h := start(t, controller.Config{})
	ctx := context.Background()
	h.admin.ApplySpec(ctx, mustRead(t, "../../examples/small.yaml"))
	h.admin.Spec(ctx)
	h.admin.PlanJSON(ctx)
	h.admin.Regions(ctx)
	h.admin.Clusters(ctx)
	tok := h.token(api.CreateTokenRequest{Cluster: "eu-central/prod", Uses: 2})
	h.admin.Tokens(ctx)
	id, err := h.enroll(tok, "n0", "node")
	if err != nil {
		t.Fatal(err)
	}
	h.admin.Nodes(ctx, "", "")
	h.admin.Node(ctx, "n0")
	if st, err := h.admin.Status(ctx); err != nil || st.Mesh != "small" || st.Nodes["weak/active"] != 1 {
		t.Errorf("status: %+v %v", st, err)
	}
	if ev, err := h.admin.Events(ctx, 5); err != nil || len(ev) == 0 || ev[len(ev)-1].Subject != "n0" {
		t.Errorf("events: %+v %v", ev, err)
	}
	if m, err := h.admin.NodeMap(ctx, "n0"); err != nil || m.Self.Name != "n0" {
		t.Errorf("node map: %+v %v", m.Self, err)
	}
	nc, _ := id.Client()
	nc.ReportStatus(ctx, api.StatusReport{Healthy: true, Peers: 2, Time: time.Now(),
		Paths: []api.PathProbe{{Peer: "gw1", Region: "eu-central", RTTMillis: 1.5, PathMTU: 1380, PlannedMTU: 1420, At: time.Now()}}})
	if ps, err := h.admin.Paths(ctx); err != nil || len(ps) != 1 || ps[0].From != "n0" || ps[0].PathMTU != 1380 {
		t.Errorf("paths: %+v %v", ps, err)
	}
	nc.Map(ctx)
	h.admin.Quarantine(ctx, "n0")
	h.admin.Release(ctx, "n0")
	h.admin.RemoveNode(ctx, "n0")
	tk, _ := jointoken.Parse(tok)
	h.admin.RevokeToken(ctx, tk.ID)
	resp, err := http.Get(strings.Replace(h.url, "https", "http", 1) + "/v1/openapi.yaml")
	if err == nil {
		resp.Body.Close()
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: nil}}
	_ = hc
	for _, op := range []string{"applySpec", "getSpec", "getPlan", "listRegions", "listClusters", "listNodes", "getNode", "getNodeMap", "removeNode",
		"quarantineNode", "releaseNode", "listTokens", "createToken", "revokeToken", "enroll", "watchMap", "reportStatus", "getStatus", "listEvents", "listPaths"} {
		// attestChallenge, nodeAttestChallenge and nodeAttest are exercised
		// by TestAttestedEnrollment through its own contract.
		if !h.ct.seen[op] {
			t.Errorf("operation %s was not exercised through the contract", op)
		}
	}
}

func TestRenewRotatesTheNodeCertificate(t *testing.T) {
	h := start(t, controller.Config{CertTTL: time.Hour})
	ctx := context.Background()
	h.admin.ApplySpec(ctx, mustRead(t, "../../examples/small.yaml"))
	id, err := h.enroll(h.token(api.CreateTokenRequest{Cluster: "eu-central/prod"}), "n0", "node")
	if err != nil {
		t.Fatal(err)
	}
	exp, err := id.Expiry()
	if err != nil || time.Until(exp) > time.Hour+time.Minute {
		t.Fatalf("certificate lifetime: expires %s (%v)", exp, err)
	}
	old, _ := id.Client()
	renewed, err := id.Renew(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if renewed.KeyPEM == id.KeyPEM || renewed.CertPEM == id.CertPEM {
		t.Fatal("renewal kept the old key or certificate")
	}
	nc, _ := renewed.Client()
	if err := nc.ReportStatus(ctx, api.StatusReport{Healthy: true}); err != nil {
		t.Fatalf("renewed certificate: %v", err)
	}
	old.CloseIdle()
	if err := old.ReportStatus(ctx, api.StatusReport{Healthy: true}); code(err) != api.CodeUnauthenticated {
		t.Fatalf("superseded certificate still works: %v", err)
	}
}

// A node's certificate is no admin credential: it cannot read another
// node's map or the registry, and it can only report its own status (the
// node endpoints take the name from the certificate, never the request).
func TestNodeCannotReadOthers(t *testing.T) {
	h := start(t, controller.Config{})
	ctx := context.Background()
	h.admin.ApplySpec(ctx, mustRead(t, "../../examples/small.yaml"))
	tok := h.token(api.CreateTokenRequest{Cluster: "eu-central/prod", Uses: 2})
	a, err := h.enroll(tok, "a", "node")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.enroll(tok, "b", "node"); err != nil {
		t.Fatal(err)
	}
	nc, _ := a.Client()
	if _, err := nc.NodeMap(ctx, "b"); code(err) != api.CodeUnauthenticated {
		t.Errorf("node a read b's map: %v", err)
	}
	if _, err := nc.Nodes(ctx, "", ""); code(err) != api.CodeUnauthenticated {
		t.Errorf("node a listed the registry: %v", err)
	}
	if err := nc.ReportStatus(ctx, api.StatusReport{Healthy: true, Peers: 99}); err != nil {
		t.Fatal(err)
	}
	if b, _ := h.admin.Node(ctx, "b"); b.Peers == 99 {
		t.Error("node a's report landed on b")
	}
	if n, _ := h.admin.Node(ctx, "a"); n.Peers != 99 {
		t.Errorf("node a's own report is missing: %+v", n)
	}
}
