package netmaker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/contract"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
)

func TestEveryClientOperationIsInSwagger(t *testing.T) {
	c, err := contract.Load(nmtest.SwaggerPath(t))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, op := range netmaker.Operations() {
		if c.Lookup(op.Method, op.Path) == nil {
			t.Errorf("%s: %s %s is not in swagger.yaml", op.Name, op.Method, op.Path)
		}
		if names[op.Name] {
			t.Errorf("two operations named %q", op.Name)
		}
		names[op.Name] = true
	}
}

// TestEveryOperationAgainstTheContractServer calls every client method
// once against the contract-checking server, and checks that every
// request the client sent is one of Operations (no call bypasses the
// list) and every listed operation was exercised.
func TestEveryOperationAgainstTheContractServer(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	ctx := context.Background()
	c := e.c
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := c.Status(ctx)
	must("status", err)
	ff, err := c.FeatureFlags(ctx)
	must("feature flags", err)
	if !ff.DeviceApproval {
		t.Error("feature flags not decoded")
	}
	n, err := c.CreateNetwork(ctx, netmaker.Network{NetID: "n1", AddressRange: "10.7.0.0/16", DefaultMTU: 1400, CreatedBy: netmaker.CreatedBy})
	must("create network", err)
	n.AutoJoin = true
	_, err = c.UpdateNetwork(ctx, n)
	must("update network", err)
	got, err := c.Network(ctx, "n1")
	must("get network", err)
	if got.AddressRange != "10.7.0.0/16" || got.Fields["id"] == nil {
		t.Errorf("network read back: %+v", got)
	}
	_, err = c.Networks(ctx)
	must("list networks", err)
	tag, err := c.CreateTag(ctx, netmaker.TagRequest{Name: "sm-x", Network: "n1", ColorCode: netmaker.TagColor})
	must("create tag", err)
	k, err := c.CreateEnrollmentKey(ctx, netmaker.KeyRequest{Tags: []string{"sm:k#0"}, Networks: []string{"n1"}, Type: netmaker.KeyUnlimited, Unlimited: true})
	must("create key", err)
	_, err = c.UpdateEnrollmentKey(ctx, k.Value, netmaker.KeyRequest{Tags: k.Tags, Networks: k.Networks, Groups: []string{tag.ID}})
	must("update key", err)
	_, err = c.EnrollmentKeys(ctx)
	must("list keys", err)
	n.AutoJoin = false
	_, err = c.UpdateNetwork(ctx, n)
	must("update network", err)
	ids, err := e.nm.Join("h1", e.pubKey("h1"), k.Token.Reveal(), time.Now())
	must("join", err)
	rejectID, _ := e.nm.Join("h2", e.pubKey("h2"), k.Token.Reveal(), time.Now())
	ps, err := c.PendingHosts(ctx, "n1")
	must("list pending", err)
	if len(ps) != 2 {
		t.Fatalf("pending: %+v", ps)
	}
	if used, ok := ps[0].KeyUsed(); !ok || used.Tags[0] != "sm:k#0" {
		t.Errorf("the key a pending host used: %+v %v", used, ok)
	}
	node, err := c.ApprovePendingHost(ctx, ids[0])
	must("approve", err)
	must("reject", c.RejectPendingHost(ctx, rejectID[0]))
	if _, ok := node.Tags[tag.ID]; !ok || node.HostID == "" {
		t.Errorf("approved node: %+v", node)
	}
	_, err = c.Nodes(ctx, "n1")
	must("list nodes", err)
	hosts, err := c.Hosts(ctx)
	must("list hosts", err)
	must("update tag", c.UpdateTag(ctx, netmaker.TagRequest{ID: tag.ID, Name: tag.Name, Network: "n1", TaggedNodes: []netmaker.NodeRef{{ID: node.ID, HostID: node.HostID, Network: "n1"}}}))
	_, err = c.Tags(ctx, "n1")
	must("list tags", err)
	a, err := c.CreateACL(ctx, netmaker.ACL{Name: "statemesh-x", MetaData: netmaker.ACLMeta, NetworkID: "n1", Policy: netmaker.PolicyDevice,
		Src: []netmaker.ACLTag{{ID: "tag", Value: tag.ID}}, Dst: []netmaker.ACLTag{{ID: "tag", Value: tag.ID}}, Protocol: "tcp", ServiceType: "Custom", Ports: []string{"22"}, Enabled: true})
	must("create ACL", err)
	a.Ports = []string{"2222"}
	must("update ACL", c.UpdateACL(ctx, a))
	_, err = c.ACLs(ctx, "n1")
	must("list ACLs", err)
	_, err = c.CreateGateway(ctx, netmaker.GatewayRequest{NetID: "n1", NodeID: node.ID, Metadata: netmaker.GatewayMeta})
	must("create gateway", err)
	must("delete gateway", c.DeleteGateway(ctx, "n1", node.ID))
	must("delete ACL", c.DeleteACL(ctx, a.ID))
	must("delete tag", c.DeleteTag(ctx, tag.ID))
	must("remove host", c.RemoveHostFromNetwork(ctx, node.HostID, "n1", true))
	must("delete key", c.DeleteEnrollmentKey(ctx, k.Value))
	must("delete host", c.DeleteHost(ctx, hosts[0].ID, false))
	must("delete network", c.DeleteNetwork(ctx, "n1"))

	listed := map[string]bool{}
	for _, op := range netmaker.Operations() {
		listed[op.Method+" "+op.Path] = false
	}
	for _, call := range e.nm.Calls() {
		if _, ok := listed[call.Op]; !ok {
			t.Errorf("%s %s (%s) is not one of the client's Operations", call.Method, call.Path, call.Op)
		}
		listed[call.Op] = true
	}
	for op, hit := range listed {
		if !hit {
			t.Errorf("%s was never checked against the contract", op)
		}
	}
	e.noViolations()
}

func TestRetriesOnlyServerErrorsAndTimeouts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fault    nmtest.Fault
		attempts int
		ok       bool
	}{
		{"503 three times", nmtest.Fault{Status: 503, Times: 3}, 4, true},
		{"500 for good", nmtest.Fault{Status: 500}, 4, false},
		{"timeouts twice", nmtest.Fault{Delay: time.Second, Times: 2}, 3, true},
		{"400", nmtest.Fault{Status: 400}, 1, false},
		{"404", nmtest.Fault{Status: 404}, 1, false},
		{"429", nmtest.Fault{Status: 429}, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nmtest.Options{})
			e.nm.Inject(tc.fault)
			_, err := e.c.Networks(context.Background())
			if (err == nil) != tc.ok {
				t.Errorf("err %v", err)
			}
			if n := len(e.nm.Calls()); n != tc.attempts {
				t.Errorf("%d attempts, want %d", n, tc.attempts)
			}
			if err != nil && tc.attempts > 1 && !errors.Is(err, netmaker.ErrUnavailable) {
				t.Errorf("a server error after the retries is not ErrUnavailable: %v", err)
			}
		})
	}
}

// The delays between attempts double from Backoff up to MaxBackoff, each
// drawn from [d/2, d].
func TestBackoffIsExponentialCappedAndJittered(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	e.c.Backoff, e.c.MaxBackoff, e.c.Retries = 40*time.Millisecond, 100*time.Millisecond, 4
	e.nm.Inject(nmtest.Fault{Status: 502})
	e.c.Networks(context.Background())
	calls := e.nm.Calls()
	if len(calls) != 5 {
		t.Fatalf("%d attempts", len(calls))
	}
	ceilings := []time.Duration{40, 80, 100, 100} // ms: doubling, capped
	for i, d := range ceilings {
		d *= time.Millisecond
		gap := calls[i+1].At.Sub(calls[i].At)
		if gap < d/2 || gap > d+60*time.Millisecond {
			t.Errorf("delay %d: %s, want within [%s, %s]", i+1, gap.Round(time.Millisecond), d/2, d)
		}
	}
	// A cancelled context stops the retries at once.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Millisecond)
	defer cancel()
	e.c.Backoff, e.c.MaxBackoff = time.Second, 5*time.Second
	start := time.Now()
	e.c.Networks(ctx)
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("a cancelled call kept retrying for %s", took)
	}
}

func TestErrorsNameTheCallAndNetmakersMessage(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	ctx := context.Background()
	if _, err := e.c.CreateNetwork(ctx, netmaker.Network{NetID: "a", AddressRange: "10.8.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.CreateNetwork(ctx, netmaker.Network{NetID: "b", AddressRange: "10.8.1.0/24"})
	var ae *netmaker.APIError
	if !errors.As(err, &ae) || ae.Status != 400 {
		t.Fatalf("want a 400 APIError, got %v", err)
	}
	if want := "netmaker: create network (POST /api/networks): 400: network cidr already in use"; err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
	if errors.Is(err, netmaker.ErrUnavailable) {
		t.Error("a 400 counts as unavailable")
	}
}

func TestTheTokenNeverPrints(t *testing.T) {
	const secret = "sekrit-master-key-0123"
	tok := netmaker.Token(secret)
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%10s", "%T %v"} {
		if s := fmt.Sprintf(f, tok); strings.Contains(s, secret) || strings.Contains(s, fmt.Sprintf("%x", secret)) {
			t.Errorf("%s shows the token: %s", f, s)
		}
	}
	c, err := netmaker.NewClient("http://127.0.0.1:1", secret, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	c.Retries = 0
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(f, c); strings.Contains(s, secret) {
			t.Errorf("%s of *Client shows the token: %s", f, s)
		}
	}
	rep := netmaker.Report{Keys: map[string]netmaker.Token{"eu/prod": netmaker.Token(secret)}}
	if s := fmt.Sprintf("%+v", rep); strings.Contains(s, secret) {
		t.Errorf("a report shows a join token: %s", s)
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c.Log = log
	_, err = c.Networks(context.Background())
	log.Info("x", "token", tok, "report", rep)
	if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(buf.String(), secret) {
		t.Errorf("the token leaked: err %v, log %s", err, buf.String())
	}
}

func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	os.WriteFile(file, []byte("  from-file\n"), 0o600)
	t.Setenv(netmaker.TokenEnv, "from-env")
	if tok, err := netmaker.LoadToken(file); err != nil || tok.Reveal() != "from-file" {
		t.Errorf("file: %v %v", tok.Reveal(), err)
	}
	if tok, err := netmaker.LoadToken(""); err != nil || tok.Reveal() != "from-env" {
		t.Errorf("env: %v %v", tok.Reveal(), err)
	}
	os.WriteFile(file, []byte("\n"), 0o600)
	if _, err := netmaker.LoadToken(file); err == nil {
		t.Error("an empty token file was accepted")
	}
	t.Setenv(netmaker.TokenEnv, "")
	if _, err := netmaker.LoadToken(""); err == nil || !strings.Contains(err.Error(), netmaker.TokenEnv) {
		t.Errorf("no token: %v", err)
	}
	if _, err := netmaker.NewClient("ftp://x", "t", 0); err == nil {
		t.Error("a bad URL was accepted")
	}
}

// The real server wraps some answers in {code, message, response}; the
// client reads both shapes (the scenario tests run in both modes too).
func TestWrappedAnswersAreRead(t *testing.T) {
	e := newEnv(t, nmtest.Options{})
	rep := e.reconcile()
	e.join("h1", "eu/prod", rep)
	e.nm.Register("other-net", e.pubKey("x"), "nm-us", time.Now())
	ps, err := e.c.PendingHosts(context.Background(), "nm-eu")
	if err != nil || len(ps) != 1 || ps[0].HostName != "h1" {
		t.Errorf("pending hosts of nm-eu (the server lists all): %+v %v", ps, err)
	}
	acls, err := e.c.ACLs(context.Background(), "nm-eu")
	if err != nil || !slices.ContainsFunc(acls, func(a netmaker.ACL) bool { return a.Name == "statemesh-seg-web" }) {
		t.Errorf("wrapped ACL list: %v %v", acls, err)
	}
	e.noViolations()
}

// TestCheckCredential: the token is checked before the first pass: a
// refused token and the master key on Netmaker Pro are clear errors; the
// master key on the community edition and an access token pass.
func TestCheckCredential(t *testing.T) {
	ctx := context.Background()
	pro := nmtest.StartWith(t, nmtest.Options{})
	ce := nmtest.StartWith(t, nmtest.Options{CE: true})
	client := func(url, tok string) *netmaker.Client {
		c, err := netmaker.NewClient(url, tok, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if _, err := netmaker.CheckCredential(ctx, client(pro.URL, nmtest.AccessToken)); err != nil {
		t.Errorf("access token on Pro: %v", err)
	}
	if _, err := netmaker.CheckCredential(ctx, client(pro.URL, nmtest.MasterKey)); !errors.Is(err, netmaker.ErrCredential) || !strings.Contains(err.Error(), "super-admin") {
		t.Errorf("master key on Pro: %v", err)
	}
	if cr, err := netmaker.CheckCredential(ctx, client(ce.URL, nmtest.MasterKey)); err != nil || !cr.MasterKey || cr.Pro {
		t.Errorf("master key on CE: %+v %v", cr, err)
	}
	if _, err := netmaker.CheckCredential(ctx, client(pro.URL, "wrong")); err == nil || !strings.Contains(err.Error(), "refused the token (401") {
		t.Errorf("wrong token: %v", err)
	}
}
