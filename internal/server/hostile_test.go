package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/jointoken"
	"github.com/statemesh/statemesh/internal/netmap"
)

// The attacks of the security review, each reproduced against the API.
// Every test here failed on the code before the fixes it names.

// smallHarness starts a controller with examples/small.yaml applied.
func smallHarness(t *testing.T, cfg controller.Config) *harness {
	h := start(t, cfg)
	if _, err := h.admin.ApplySpec(context.Background(), mustRead(t, "../../examples/small.yaml")); err != nil {
		t.Fatal(err)
	}
	return h
}

// Identity takeover: a holder of the (multi-use) join token re-enrolled an
// enrolled node's name with its public key and a CSR of its own, and got a
// certificate for it.
func TestReenrollmentNeedsTheEnrolledKey(t *testing.T) {
	h := smallHarness(t, controller.Config{})
	ctx := context.Background()
	tok := h.token(api.CreateTokenRequest{Cluster: "eu-central/prod", Uses: 5})
	victimKey := key(t)
	victim, err := apiclient.Enroll(ctx, h.url, tok, api.EnrollRequest{Name: "victim", Role: "node", PublicKey: victimKey, Endpoint: "192.0.2.1:51820"})
	if err != nil {
		t.Fatal(err)
	}

	// The attacker knows the token and the victim's public key (every
	// peer's map has it) but not the victim's certificate key.
	_, err = apiclient.Enroll(ctx, h.url, tok, api.EnrollRequest{Name: "victim", Role: "node", PublicKey: victimKey, Endpoint: "198.51.100.9:51820"})
	if code(err) != api.CodeAlreadyExists {
		t.Fatalf("re-enrollment with the token and the victim's public key: %v, want %s", err, api.CodeAlreadyExists)
	}
	// The victim's certificate is not superseded: it still works.
	vc, err := victim.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := vc.ReportStatus(ctx, api.StatusReport{Healthy: true}); err != nil {
		t.Fatalf("the victim's certificate after the attack: %v", err)
	}

	// The node's own retry (it lost the answer) signs with the key it
	// enrolled with, and gets a certificate without spending a token use.
	keyPEM := victim.KeyPEM
	again, err := apiclient.EnrollWithKey(ctx, h.url, tok, api.EnrollRequest{Name: "victim", Role: "node", PublicKey: victimKey, Endpoint: "192.0.2.1:51820"}, nil, keyPEM)
	if err != nil {
		t.Fatalf("the node's own retry with its enrollment key: %v", err)
	}
	if again.Node.OverlayIPv4 != victim.Node.OverlayIPv4 {
		t.Errorf("retry moved the node: %s → %s", victim.Node.OverlayIPv4, again.Node.OverlayIPv4)
	}
	ts, err := h.admin.Tokens(ctx)
	if err != nil || len(ts) != 1 || ts[0].Used != 1 {
		t.Errorf("token uses after one enrollment and its retry: %+v %v, want 1", ts, err)
	}
	// Once renewed, the enrollment key proves nothing any more.
	renewed, err := again.Renew(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := apiclient.EnrollWithKey(ctx, h.url, tok, api.EnrollRequest{Name: "victim", Role: "node", PublicKey: victimKey}, nil, keyPEM); code(err) != api.CodeAlreadyExists {
		t.Errorf("retry with a key the node renewed away from: %v", err)
	}
	// A quarantined node cannot enroll its way out, even with its key.
	if _, err := h.admin.Quarantine(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	if _, err := apiclient.EnrollWithKey(ctx, h.url, tok, api.EnrollRequest{Name: "victim", Role: "node", PublicKey: victimKey}, nil, renewed.KeyPEM); code(err) != api.CodeQuarantined {
		t.Errorf("a quarantined node's re-enrollment: %v, want %s", err, api.CodeQuarantined)
	}
	// After an admin removes it, the name is free for a new enrollment.
	if err := h.admin.RemoveNode(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.enroll(tok, "victim", "node"); err != nil {
		t.Errorf("enrolling the name again after removal: %v", err)
	}
}

// Another node's WireGuard key: a second node (same cluster, another
// region), or a client, took node A's key; peers then held two peers with
// one key. Small-order and non-canonical keys were accepted too.
func TestWireGuardKeysAreUniqueMeshWide(t *testing.T) {
	h := start(t, controller.Config{})
	ctx := context.Background()
	if _, err := h.admin.ApplySpec(ctx, mustRead(t, "../../examples/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	enroll := func(cluster, name string, k netmap.Key) error {
		_, err := apiclient.Enroll(ctx, h.url, h.token(api.CreateTokenRequest{Cluster: cluster}), api.EnrollRequest{Name: name, Role: "node", PublicKey: k, Endpoint: "192.0.2.1:51820"})
		return err
	}
	nodes, err := h.admin.Regions(ctx)
	if err != nil || len(nodes) < 2 {
		t.Fatalf("regions: %v %v", nodes, err)
	}
	clusters, err := h.admin.Clusters(ctx)
	if err != nil || len(clusters) < 2 {
		t.Fatalf("clusters: %v %v", clusters, err)
	}
	first := clusters[0].Region + "/" + clusters[0].Name
	var other string
	for _, c := range clusters {
		if c.Region != clusters[0].Region {
			other = c.Region + "/" + c.Name
		}
	}
	k := key(t)
	if err := enroll(first, "node-a", k); err != nil {
		t.Fatal(err)
	}
	if err := enroll(first, "node-b", k); code(err) != api.CodeAlreadyExists {
		t.Errorf("same key, same cluster: %v", err)
	}
	if err := enroll(other, "node-c", k); code(err) != api.CodeAlreadyExists {
		t.Errorf("same key, another region: %v", err)
	}
	high := k
	high[31] |= 0x80 // X25519 ignores the top bit: the same peer
	if err := enroll(first, "node-d", high); code(err) != api.CodeInvalidArgument {
		t.Errorf("the key with its top bit set: %v", err)
	}
	lowOrder, _ := hex.DecodeString("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
	var lo netmap.Key
	copy(lo[:], lowOrder)
	if err := enroll(first, "node-e", lo); code(err) != api.CodeInvalidArgument {
		t.Errorf("a small-order point: %v", err)
	}
	if _, err := apiclient.Enroll(ctx, h.url, h.token(api.CreateTokenRequest{Region: clusters[0].Region, Role: "gateway"}), api.EnrollRequest{Name: "gw", Role: "gateway", PublicKey: key(t), Endpoint: "192.0.2.2:51820"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.AddClient(ctx, api.AddClientRequest{Name: "laptop", Region: clusters[0].Region, PublicKey: k}); code(err) != api.CodeAlreadyExists {
		t.Errorf("a client with a node's key: %v", err)
	}
	// Free again once its owner is gone.
	if err := h.admin.RemoveNode(ctx, "node-a"); err != nil {
		t.Fatal(err)
	}
	if err := enroll(first, "node-b", k); err != nil {
		t.Errorf("the key after its node was removed: %v", err)
	}
	// The peers of a node in that cluster hold the key once.
	peers := 0
	m, err := h.admin.NodeMap(ctx, "node-b")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range m.Peers {
		if p.PublicKey == k {
			peers++
		}
	}
	if peers != 0 {
		t.Errorf("node-b's own map lists its key as a peer %d times", peers)
	}
}

// Challenges piled up: every POST /v1/node/attest/challenge wrote a session
// that was never deleted; node endpoints had no rate limit.
func TestReattestationChallengesDoNotPileUp(t *testing.T) {
	a, id, pcr16 := simTPM(t)
	h := start(t, controller.Config{})
	ctx := context.Background()
	if _, err := h.admin.ApplySpec(ctx, []byte(attestSpec(attest.EKDigest(id.EKPub), hex.EncodeToString(pcr16)))); err != nil {
		t.Fatal(err)
	}
	k, _ := netmap.GeneratePrivateKey()
	node, err := apiclient.EnrollAttested(ctx, h.url, h.token(api.CreateTokenRequest{Cluster: "r/strict"}), api.EnrollRequest{Name: "strong-1", Role: "node", PublicKey: k.PublicKey()}, &simAttester{a: a})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := node.Client()
	if err != nil {
		t.Fatal(err)
	}
	sessions := func() int {
		kvs, _, err := h.st.List(ctx, "attest/")
		if err != nil {
			t.Fatal(err)
		}
		return len(kvs)
	}
	before := sessions()
	limited := 0
	for range 120 {
		_, err := nc.NodeChallenge(ctx)
		switch {
		case err == nil:
		case apiclient.RetryAfter(err) > 0:
			limited++
		default:
			t.Fatalf("challenge: %v", err)
		}
	}
	if after := sessions(); after > before+2 {
		t.Errorf("120 challenges left %d keys under attest/ (was %d): sessions pile up", after, before)
	}
	if limited == 0 {
		t.Errorf("120 challenges at once were never rate-limited")
	}
}

// Expired challenges (asked and never answered) are swept.
func TestExpiredChallengesAreSwept(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	_, id, pcr16 := simTPM(t)
	h := start(t, controller.Config{Now: func() time.Time { return clock() }})
	ctx := context.Background()
	if _, err := h.admin.ApplySpec(ctx, []byte(attestSpec(attest.EKDigest(id.EKPub), hex.EncodeToString(pcr16)))); err != nil {
		t.Fatal(err)
	}
	tok := h.token(api.CreateTokenRequest{Cluster: "r/strict", Uses: 10})
	c, err := apiclient.NewPinned(h.url, mustPin(t, tok))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := c.AttestChallenge(ctx, tok, attest.Encode(id)); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		kvs, _, err := h.st.List(ctx, "attest/sessions/")
		if err != nil {
			t.Fatal(err)
		}
		return len(kvs)
	}
	if n := count(); n != 5 {
		t.Fatalf("%d open sessions, want 5", n)
	}
	if err := h.c.SweepSessions(ctx, now.Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 5 {
		t.Errorf("sweeping before they expire left %d of 5", n)
	}
	if err := h.c.SweepSessions(ctx, now.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Errorf("%d expired sessions left after a sweep", n)
	}
}

func mustPin(t *testing.T, token string) string {
	jt, err := jointoken.Parse(token)
	if err != nil {
		t.Fatal(err)
	}
	return jt.CAPin
}

// Terminal injection: a node's status fields reached admins' terminals
// raw. The controller keeps only cleaned text.
func TestStatusTextIsCleaned(t *testing.T) {
	h := smallHarness(t, controller.Config{})
	ctx := context.Background()
	id, err := h.enroll(h.token(api.CreateTokenRequest{Cluster: "eu-central/prod"}), "evil", "node")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := id.Client()
	if err != nil {
		t.Fatal(err)
	}
	evil := "\x1b[2J\x1b[Henforced\r\nfake-node  eu-central  prod  node  strong  active\u202e"
	if err := nc.ReportStatus(ctx, api.StatusReport{Healthy: true, Firewall: evil, Message: evil, StalePeers: []string{"\x1b]0;pwned\x07"}}); err != nil {
		t.Fatal(err)
	}
	n, err := h.admin.Node(ctx, "evil")
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{n.Firewall, strings.Join(n.StalePeers, ",")} {
		for _, r := range field {
			if r < 0x20 || r == 0x7f || r == 0x202e {
				t.Errorf("the controller keeps a control character %U in %q", r, field)
			}
		}
	}
	if !strings.Contains(n.Firewall, `\x1b[2J`) {
		t.Errorf("the escape is not shown visibly: %q", n.Firewall)
	}
}

// Quarantined certificates kept working: map, status, renewal, challenges.
func TestQuarantinedCertificateStopsWorking(t *testing.T) {
	h := smallHarness(t, controller.Config{})
	ctx := context.Background()
	id, err := h.enroll(h.token(api.CreateTokenRequest{Cluster: "eu-central/prod"}), "q1", "node")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := id.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.Quarantine(ctx, "q1"); err != nil {
		t.Fatal(err)
	}
	if err := nc.ReportStatus(ctx, api.StatusReport{Healthy: true}); code(err) != api.CodeQuarantined {
		t.Errorf("status from a quarantined node: %v", err)
	}
	if _, err := id.Renew(ctx); code(err) != api.CodeQuarantined {
		t.Errorf("renewal by a quarantined node: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second) // a stream that opens never ends by itself
	defer cancel()
	if err := nc.Watch(wctx, 0, func(api.Frame) error { return nil }); code(err) != api.CodeQuarantined {
		t.Errorf("map of a quarantined node: %v", err)
	}
	// Released: the same certificate works again.
	if _, err := h.admin.Release(ctx, "q1"); err != nil {
		t.Fatal(err)
	}
	if err := nc.ReportStatus(ctx, api.StatusReport{Healthy: true}); err != nil {
		t.Errorf("status after release: %v", err)
	}
}

// Admin tokens: unknown and wrong ones answered differently; none expired
// and none could be revoked.
func TestAdminTokens(t *testing.T) {
	h := smallHarness(t, controller.Config{})
	ctx := context.Background()
	call := func(token string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, h.url+"/v1/nodes", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := h.httpClient(nil).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body bytes.Buffer
		body.ReadFrom(resp.Body)
		return resp.StatusCode, body.String()
	}
	parts := strings.Split(h.cfg.Token, ".")
	_, unknown := call("sma1.000000000000." + parts[2])
	_, wrong := call(parts[0] + "." + parts[1] + ".not-the-secret")
	if unknown != wrong {
		t.Errorf("unknown and wrong admin tokens answer differently:\n%s\n%s", unknown, wrong)
	}

	created, err := h.admin.CreateAdminToken(ctx, api.CreateAdminTokenRequest{Name: "ci pipeline", TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := call(created.Secret); st != http.StatusOK {
		t.Errorf("a new admin token: %d", st)
	}
	if created.ExpiresAt.Sub(created.CreatedAt) != time.Hour {
		t.Errorf("expires %s after creation, want 1h", created.ExpiresAt.Sub(created.CreatedAt))
	}
	list, err := h.admin.AdminTokens(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("admin tokens: %+v %v", list, err)
	}
	if err := h.admin.RevokeAdminToken(ctx, created.ID); err != nil {
		t.Fatal(err)
	}
	if st, _ := call(created.Secret); st != http.StatusUnauthorized {
		t.Errorf("a revoked admin token: %d", st)
	}
	if err := h.admin.RevokeAdminToken(ctx, parts[1]); code(err) != api.CodeConflict {
		t.Errorf("revoking the last valid admin token: %v", err)
	}
	if _, err := h.admin.CreateAdminToken(ctx, api.CreateAdminTokenRequest{Name: "x", TTL: "100000h"}); code(err) != api.CodeInvalidArgument {
		t.Errorf("an admin token for 11 years: %v", err)
	}
}

// An admin token expires.
func TestAdminTokenExpires(t *testing.T) {
	now := time.Now()
	h := start(t, controller.Config{Now: func() time.Time { return now }})
	ctx := context.Background()
	created, err := h.admin.CreateAdminToken(ctx, api.CreateAdminTokenRequest{Name: "short", TTL: "1m"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.c.AuthenticateAdmin(ctx, created.Secret); err != nil {
		t.Fatalf("fresh: %v", err)
	}
	now = now.Add(time.Minute)
	if err := h.c.AuthenticateAdmin(ctx, created.Secret); code(err) != api.CodeUnauthenticated {
		t.Errorf("after its TTL: %v", err)
	}
}

// The audit log has a line for every refused enrollment and every
// certificate issued, with the token ID, key fingerprints and client
// address, and never a secret.
func TestAuditLog(t *testing.T) {
	var buf lockedBuffer
	h := start(t, controller.Config{Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	ctx := context.Background()
	if _, err := h.admin.ApplySpec(ctx, mustRead(t, "../../examples/small.yaml")); err != nil {
		t.Fatal(err)
	}
	tok := h.token(api.CreateTokenRequest{Cluster: "eu-central/prod", Uses: 2})
	id, err := h.enroll(tok, "audited", "node")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.enroll(tok, "audited", "node"); err == nil {
		t.Fatal("second enrollment of one name accepted")
	}
	if _, err := h.enroll("smt1.nosuch.secret."+mustPin(t, tok), "other", "node"); err == nil {
		t.Fatal("unknown token accepted")
	}
	if _, err := id.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	var issued, refused []map[string]any
	for _, line := range strings.Split(buf.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["audit"] != true {
			continue
		}
		if strings.Contains(line, strings.Split(tok, ".")[2]) || strings.Contains(line, "PRIVATE KEY") {
			t.Errorf("an audit line holds a secret: %s", line)
		}
		switch rec["msg"] {
		case "certificate issued":
			issued = append(issued, rec)
		case "enrollment refused":
			refused = append(refused, rec)
		}
	}
	if len(issued) != 2 || len(refused) != 2 {
		t.Fatalf("audit: %d issued (want 2: enrollment, renewal), %d refused (want 2)\n%s", len(issued), len(refused), buf.String())
	}
	tokenID := strings.Split(tok, ".")[1]
	if e := issued[0]; e["node"] != "audited" || e["token"] != tokenID || e["wgKey"] == "" || e["certKey"] == "" || !strings.HasPrefix(e["client"].(string), "127.0.0.1:") {
		t.Errorf("issued line lacks who, which token, which keys or from where: %v", e)
	}
	if e := refused[0]; e["node"] != "audited" || e["token"] != tokenID || e["code"] != api.CodeAlreadyExists || !strings.HasPrefix(e["client"].(string), "127.0.0.1:") {
		t.Errorf("refused line: %v", e)
	}
	if e := issued[1]; e["for"] != "renewal" {
		t.Errorf("renewal line: %v", e)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// httpClient returns a client trusting the controller's CA, presenting
// the identity's certificate when given.
func (h *harness) httpClient(id *apiclient.Identity) *http.Client {
	h.t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(h.cfg.CA))
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	if id != nil {
		cert, err := tls.X509KeyPair([]byte(id.CertPEM), []byte(id.KeyPEM))
		if err != nil {
			h.t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
}

// A strong node's retry after a lost answer needs fresh evidence from the
// same TPM, besides its enrollment key.
func TestStrongReenrollmentNeedsFreshEvidence(t *testing.T) {
	a, id, pcr16 := simTPM(t)
	h := start(t, controller.Config{})
	ctx := context.Background()
	if _, err := h.admin.ApplySpec(ctx, []byte(attestSpec(attest.EKDigest(id.EKPub), hex.EncodeToString(pcr16)))); err != nil {
		t.Fatal(err)
	}
	tok := h.token(api.CreateTokenRequest{Cluster: "r/lenient", Uses: 5})
	wg := key(t)
	req := api.EnrollRequest{Name: "strong-1", Role: "node", PublicKey: wg, Endpoint: "192.0.2.1:51820"}
	keyPEM, err := apiclient.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	first, err := apiclient.EnrollWithKey(ctx, h.url, tok, req, &simAttester{a: a}, keyPEM)
	if err != nil || first.Node.Class != netmap.ClassStrong {
		t.Fatalf("attested enrollment: %+v %v", first, err)
	}
	// The same key without evidence (the cluster admits weak nodes, so a
	// new node without evidence would be admitted as weak): refused.
	if _, err := apiclient.EnrollWithKey(ctx, h.url, tok, req, nil, keyPEM); code(err) != api.CodeAttestationFailed {
		t.Errorf("a strong node's retry without evidence: %v, want %s", err, api.CodeAttestationFailed)
	}
	again, err := apiclient.EnrollWithKey(ctx, h.url, tok, req, &simAttester{a: a}, keyPEM)
	if err != nil || again.Node.Class != netmap.ClassStrong {
		t.Errorf("a strong node's retry with fresh evidence: %+v %v", again, err)
	}
}
