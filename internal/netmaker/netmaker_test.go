package netmaker_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
	"github.com/statemesh/statemesh/internal/spec"
)

func TestEveryClientCallIsInTheContract(t *testing.T) {
	c, err := netmaker.LoadContract(nmtest.SwaggerPath(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range netmaker.Operations {
		if !c.Has(op[0], op[1]) {
			t.Errorf("%s %s is not in swagger.yaml", op[0], op[1])
		}
	}
}

// The validator must refuse what is off contract, or it proves nothing.
func TestContractRefusesBadRequests(t *testing.T) {
	c, err := netmaker.LoadContract(nmtest.SwaggerPath(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, path string
		query        url.Values
		body, want   string
	}{
		{"PATCH", "/api/networks", nil, "", "no such operation"},
		{"GET", "/api/nowhere", nil, "", "no such operation"},
		{"GET", "/api/v1/pending_hosts", nil, "", `query parameter "network" is required`},
		{"GET", "/api/networks", url.Values{"bogus": {"1"}}, "", "unknown query parameter"},
		{"DELETE", "/api/networks/x", url.Values{"force": {"maybe"}}, "", "not a boolean"},
		{"POST", "/api/networks", nil, "", "body is required"},
		{"POST", "/api/networks", nil, `{"netid": 5}`, "want a string"},
		{"POST", "/api/networks", nil, `{"netid": "a", "colour": "red"}`, `field "colour" is not in the schema`},
		{"POST", "/api/v1/enrollment-keys", nil, `{"networks": ["a"]}`, `required field "tags" is missing`},
		{"POST", "/api/v1/enrollment-keys", nil, `{"tags": [], "type": 9}`, "is not one of"},
		{"POST", "/api/v1/acls", nil, `{"protocol": "sctp"}`, "is not one of"},
		{"POST", "/api/v1/acls", nil, `{"src_type": [{"id": "planet", "value": "x"}]}`, "is not one of"},
	} {
		var body []byte
		if tc.body != "" {
			body = []byte(tc.body)
		}
		err := c.CheckRequest(tc.method, tc.path, tc.query, body)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s %s: got %v, want an error with %q", tc.method, tc.path, tc.body, err, tc.want)
		}
	}
	if err := c.CheckRequest("POST", "/api/v1/pending_hosts/approve/p1", nil, nil); err != nil {
		t.Errorf("a literal segment must win over a parameter: %v", err)
	}
}

const policyYAML = `
segments:
  - {name: web, match: {clusters: [eu/prod, us/prod]}}
  - {name: db, match: {clusters: [eu/data]}, sensitive: true}
rules:
  - {name: web-db, from: web, to: db, ports: ["tcp/5432", "tcp/6000-6010", icmp]}
`

func fixture(t *testing.T) (*nmtest.Server, *netmaker.Reconciler, netmaker.Desired) {
	s := nmtest.Start(t)
	c, err := netmaker.NewClient(s.URL, s.Token, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Backoff = 10 * time.Millisecond
	var pol spec.Policy
	mustYAML(t, policyYAML, &pol)
	clusters := []netmaker.Cluster{{Region: "eu", Name: "prod", Network: "eu"}, {Region: "eu", Name: "data", Network: "eu"}, {Region: "us", Name: "prod", Network: "us"}}
	acls, tags, err := netmaker.MapPolicy(&pol, clusters)
	if err != nil {
		t.Fatal(err)
	}
	d := netmaker.Desired{
		Networks: []netmaker.NetworkSpec{{Name: "eu", AddressRange: "100.64.0.0/13", MTU: 1440}, {Name: "us", AddressRange: "100.72.0.0/13", MTU: 1440}},
		ACLs:     acls,
		Attested: map[string]string{},
		Removed:  map[string]time.Time{},
		Grace:    time.Minute,
	}
	for _, cl := range clusters {
		d.Keys = append(d.Keys, netmaker.KeySpec{Region: cl.Region, Cluster: cl.Name, Network: cl.Network, Tags: tags[cl.Region+"/"+cl.Name]})
	}
	return s, &netmaker.Reconciler{C: c}, d
}

func TestReconcileCreatesThenIsIdempotent(t *testing.T) {
	s, r, d := fixture(t)
	ctx := context.Background()
	rep, err := r.Reconcile(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Networks) != 2 || len(s.Keys) != 3 || len(rep.Keys) != 3 {
		t.Fatalf("networks %d, keys %d: %v", len(s.Networks), len(s.Keys), rep.Writes)
	}
	// web-db: eu only (db has no cluster in us), tcp and icmp.
	if len(s.ACLs) != 2 {
		t.Errorf("ACLs: %+v", s.ACLs)
	}
	for _, a := range s.ACLs {
		if a.NetworkID != "eu" || a.Src[0].Value != "eu.sm-seg-web" || a.Dst[0].Value != "eu.sm-seg-db" {
			t.Errorf("ACL %+v", a)
		}
		if a.Protocol == "tcp" && strings.Join(a.Ports, ",") != "5432,6000-6010" {
			t.Errorf("tcp ports %v", a.Ports)
		}
	}
	if k := s.Keys[rep.Keys["eu/prod"]]; strings.Join(k.Tags, ",") != "statemesh-managed,sm-cluster-eu-prod,sm-seg-web" {
		t.Errorf("eu/prod key tags %v", k.Tags)
	}
	writes := s.WriteCount()
	rep, err = r.Reconcile(ctx, d)
	if err != nil || len(rep.Writes) != 0 || s.WriteCount() != writes {
		t.Errorf("second run wrote %v (%d calls), %v", rep.Writes, s.WriteCount()-writes, err)
	}
	if len(s.Violations) != 0 {
		t.Errorf("contract violations: %v", s.Violations)
	}
}

func TestAdmissionFollowsAttestation(t *testing.T) {
	s, r, d := fixture(t)
	ctx := context.Background()
	now := time.Now()
	r.Reconcile(ctx, d)
	good := s.Register("attested", "KEY-GOOD", "eu", now)
	unknownNew := s.Register("new", "KEY-NEW", "eu", now)
	unknownOld := s.Register("stranger", "KEY-OLD", "eu", now.Add(-time.Hour))
	d.Attested["KEY-GOOD"] = "eu-prod-n1"
	rep, err := r.Reconcile(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.Approved, ",") != good || strings.Join(rep.Rejected, ",") != unknownOld {
		t.Errorf("approved %v, rejected %v (want %s approved, %s rejected, %s still pending)", rep.Approved, rep.Rejected, good, unknownOld, unknownNew)
	}
	if nets := s.HostNetworks("attested"); len(nets) != 1 || nets[0] != "eu" {
		t.Errorf("the attested host is in %v", nets)
	}
	if _, waiting := s.Pending[unknownNew]; !waiting {
		t.Error("a host within the grace period was decided")
	}
	// Quarantined in StateMesh: out of its networks, and the time it took
	// is measured from the StateMesh event.
	d.Removed["KEY-GOOD"] = time.Now().Add(-1500 * time.Millisecond)
	rep, err = r.Reconcile(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if nets := s.HostNetworks("attested"); len(nets) != 0 {
		t.Errorf("the quarantined node's host is still in %v", nets)
	}
	if took, ok := rep.Removed["attested"]; !ok || took < 1500*time.Millisecond || took > 5*time.Second {
		t.Errorf("removal not reported with its delay: %v", rep.Removed)
	}
	t.Logf("quarantine to removal: %s (1.5 s before this pass; the pass itself took the rest)", rep.Removed["attested"].Round(time.Millisecond))
	if len(s.Violations) != 0 {
		t.Errorf("contract violations: %v", s.Violations)
	}
}

func TestACLsFollowPolicyChanges(t *testing.T) {
	s, r, d := fixture(t)
	ctx := context.Background()
	r.Reconcile(ctx, d)
	var pol spec.Policy
	mustYAML(t, strings.Replace(policyYAML, `ports: ["tcp/5432", "tcp/6000-6010", icmp]`, `ports: ["tcp/5433"]`, 1), &pol)
	clusters := []netmaker.Cluster{{Region: "eu", Name: "prod", Network: "eu"}, {Region: "eu", Name: "data", Network: "eu"}, {Region: "us", Name: "prod", Network: "us"}}
	d.ACLs, _, _ = netmaker.MapPolicy(&pol, clusters)
	rep, err := r.Reconcile(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.ACLs) != 1 {
		t.Fatalf("ACLs after the change: %+v (%v)", s.ACLs, rep.Writes)
	}
	for _, a := range s.ACLs {
		if a.Protocol != "tcp" || strings.Join(a.Ports, ",") != "5433" {
			t.Errorf("ACL after the change: %+v", a)
		}
	}
}

func TestUnmarkedObjectsSurvive(t *testing.T) {
	s, r, d := fixture(t)
	ctx := context.Background()
	s.Networks["theirs"] = netmaker.Network{NetID: "theirs", AddressRange: "10.9.0.0/16"}
	s.Networks["eu"] = netmaker.Network{NetID: "eu", AddressRange: "10.1.0.0/16"} // same name, not ours
	s.Keys["their-key"] = netmaker.EnrollmentKey{Value: "their-key", Tags: []string{"ops"}, Networks: []string{"theirs"}}
	s.ACLs["their-acl"] = netmaker.ACL{ID: "their-acl", Name: "allow-all", NetworkID: "eu", Policy: "device-policy", Protocol: "all", Enabled: true}
	rep, err := r.Reconcile(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if s.Networks["eu"].AddressRange != "10.1.0.0/16" || len(rep.Notes) == 0 {
		t.Errorf("a network StateMesh did not create was changed: %+v %v", s.Networks["eu"], rep.Notes)
	}
	if _, err := r.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Networks["theirs"]; !ok {
		t.Error("detach deleted a network StateMesh did not create")
	}
	if _, ok := s.Networks["eu"]; !ok {
		t.Error("detach deleted the operator's eu network")
	}
	if _, ok := s.Networks["us"]; ok {
		t.Error("detach left StateMesh's us network")
	}
	if len(s.Keys) != 1 || len(s.ACLs) != 1 {
		t.Errorf("after detach: keys %v, ACLs %v (want only the operator's)", s.Keys, s.ACLs)
	}
}

func TestErrorsAndTimeoutsDoNotWedge(t *testing.T) {
	s, r, d := fixture(t)
	ctx := context.Background()
	// Every call fails for a while: the pass returns errors, within a
	// bound, after retrying.
	s.Fail(1000, 503)
	start := time.Now()
	_, err := r.Reconcile(ctx, d)
	var ae *netmaker.APIError
	if err == nil || !errors.As(err, &ae) || ae.Status != 503 {
		t.Fatalf("want 503 errors, got %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a failing server held the pass for %s", took)
	}
	if strings.Contains(err.Error(), s.Token) {
		t.Error("the token leaked into an error")
	}
	// A few failures are ridden out by the retries.
	s.Fail(2, 502)
	if _, err := r.Reconcile(ctx, d); err != nil {
		t.Fatalf("two transient failures: %v", err)
	}
	// A stalled server times out; after it recovers the next pass
	// converges.
	s.Stall(3 * time.Second)
	r.C.Retries = 0
	tctx, cancel := context.WithTimeout(ctx, time.Second)
	_, err = r.Reconcile(tctx, d)
	cancel()
	if err == nil {
		t.Error("a stalled server did not time out")
	}
	s.Stall(0)
	// Netmaker restarted without its state: everything is recreated.
	s.Reset()
	rep, err := r.Reconcile(ctx, d)
	if err != nil || len(s.Networks) != 2 || len(s.Keys) != 3 {
		t.Errorf("after a restart: %v %v", rep.Writes, err)
	}
}

func TestMapPolicyRefusesWhatNetmakerCannotExpress(t *testing.T) {
	var pol spec.Policy
	mustYAML(t, `
segments:
  - {name: a, match: {labels: {app: x}}}
  - {name: b, isolated: true}
  - {name: c, clients: true}
  - {name: d, match: {classes: [weak]}}
  - {name: e}
`, &pol)
	_, _, err := netmaker.MapPolicy(&pol, []netmaker.Cluster{{Region: "eu", Name: "prod", Network: "eu"}})
	for _, want := range []string{"(a): matches labels", "(b): isolated", "(c): external clients", "(d): selects weak nodes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("not refused: %q in %v", want, err)
		}
	}
	if err != nil && strings.Contains(err.Error(), "(e)") {
		t.Errorf("a plain segment was refused: %v", err)
	}
}

func TestClientHidesItsToken(t *testing.T) {
	c, _ := netmaker.NewClient("https://nm.example", "sekrit", 0)
	if strings.Contains(c.String(), "sekrit") {
		t.Error("String shows the token")
	}
	if _, err := netmaker.NewClient("ftp://x", "t", 0); err == nil {
		t.Error("bad URL accepted")
	}
}

func mustYAML(t *testing.T, s string, v any) {
	t.Helper()
	if err := yaml.Unmarshal([]byte(s), v); err != nil {
		t.Fatal(err)
	}
}

// FuzzCheckRequest: the contract checker takes whatever a client sends
// without panicking.
func FuzzCheckRequest(f *testing.F) {
	c, err := netmaker.LoadContract(nmtest.SwaggerPath(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("POST", "/api/v1/acls", `{"name":"x","protocol":"tcp","src_type":[{"id":"tag","value":"n.t"}]}`)
	f.Add("GET", "/api/v1/pending_hosts", "")
	f.Add("DELETE", "/api/hosts/h/networks/n", `[1,2,{"a":null}]`)
	f.Fuzz(func(t *testing.T, method, path, body string) {
		c.CheckRequest(method, path, url.Values{"network": {"n"}}, []byte(body))
		c.CheckResponse(method, path, 200, []byte(body))
	})
}
