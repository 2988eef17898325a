package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/golden"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, strings.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

func TestVersion(t *testing.T) {
	r := run(t, "", "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "statemesh ") {
		t.Fatalf("%+v", r)
	}
}

func TestMTUDoneWhen(t *testing.T) {
	for fam, want := range map[string]string{"ipv6": "WireGuard MTU: 1420", "ipv4": "WireGuard MTU: 1440"} {
		r := run(t, "", "mtu", "--underlay-mtu", "1500", "--underlay-family", fam)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("%s: %+v", fam, r)
		}
	}
	r := run(t, "", "mtu", "--underlay-mtu", "1500", "--cilium", "vxlan", "-o", "json")
	var v struct{ WireGuardMTU, PodMTU int }
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.WireGuardMTU != 1440 || v.PodMTU != 1390 {
		t.Errorf("json: %v %+v %s", err, v, r.stdout)
	}
}

func TestMTURefusals(t *testing.T) {
	r := run(t, "", "mtu", "--underlay-mtu", "1300", "--payload-family", "ipv6")
	if r.code != ExitError || !strings.Contains(r.stderr, "needs at least 1280") {
		t.Errorf("%+v", r)
	}
	r = run(t, "", "mtu")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--underlay-mtu is required") {
		t.Errorf("%+v", r)
	}
	r = run(t, "", "mtu", "--underlay-mtu", "x")
	if r.code != ExitUsage {
		t.Errorf("bad flag value: %+v", r)
	}
}

func TestPlanExamples(t *testing.T) {
	r := run(t, "", "plan", "-f", "../../examples/design-limit-ipv6.yaml")
	if r.code != 0 || !strings.Contains(r.stdout, "paris/c10") {
		t.Fatalf("%d %s", r.code, r.stderr)
	}
	r = run(t, "", "plan", "-f", "../../examples/small.yaml")
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	golden.Check(t, "plan-small.txt", []byte(r.stdout))

	r = run(t, "", "plan", "-f", "../../examples/design-limit-ipv6.yaml", "-o", "json")
	var p map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || r.code != 0 {
		t.Fatalf("json output: %v", err)
	}
	r = run(t, "", "plan", "-f", "../../examples/small.yaml", "-o", "yaml")
	if r.code != 0 || !strings.Contains(r.stdout, "podMTU: 1440") || !strings.Contains(r.stdout, `used: "262144"`) {
		t.Errorf("yaml output:\n%s", r.stdout)
	}
}

func TestPlanIPv4DesignLimitFails(t *testing.T) {
	r := run(t, "", "plan", "-f", "../../examples/design-limit-ipv4.yaml")
	if r.code != ExitError {
		t.Fatalf("exit %d", r.code)
	}
	for _, s := range []string{"209,715,200", "RFC 1918", "17 of 200 clusters", "addressing.podIPv6"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr lacks %q:\n%s", s, r.stderr)
		}
	}
}

func TestPlanWithState(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "plan.json")
	r := run(t, "", "plan", "-f", "../../examples/small.yaml", "-o", "json")
	if err := os.WriteFile(state, []byte(r.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	r2 := run(t, "", "plan", "-f", "../../examples/small.yaml", "-o", "json", "--state", state)
	if r2.code != 0 || r2.stdout != r.stdout {
		t.Errorf("replanning with own state changed the plan: %s", r2.stderr)
	}
	r3 := run(t, "", "plan", "-f", "../../examples/small.yaml", "--state", "../../examples/small.yaml")
	if r3.code != ExitError || !strings.Contains(r3.stderr, "not a StateMesh plan") {
		t.Errorf("%+v", r3)
	}
}

func TestValidate(t *testing.T) {
	r := run(t, "", "validate", "-f", "../../examples/small.yaml")
	if r.code != 0 || !strings.Contains(r.stdout, "valid (mesh small: 2 regions, 3 clusters)") {
		t.Errorf("%+v", r)
	}
	bad := `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: x}
regions:
  - name: EU
    gateways: 1
    clusters:
      - {name: a, maxNodes: 9000, podCIDRs: [10.0.0.0/33]}
`
	r = run(t, bad, "validate", "-f", "-")
	if r.code != ExitError {
		t.Fatalf("exit %d", r.code)
	}
	golden.Check(t, "validate-bad.txt", []byte(r.stderr))
	for _, s := range []string{"4 errors", "regions[0].name", "regions[0].gateways", "regions[0].clusters[0].maxNodes", "regions[0].clusters[0].podCIDRs[0]", "line 5", "fix:"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr lacks %q", s)
		}
	}
	r = run(t, "", "validate", "-f", "../../examples/design-limit-ipv4.yaml")
	if r.code != ExitError || !strings.Contains(r.stderr, "cannot be planned") {
		t.Errorf("infeasible spec validated: %+v", r)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"plan"}, {"plan", "-f", "x", "-o", "xml"}, {"version", "extra"}, {"nosuch"}, {"plan", "--nosuch"}} {
		r := run(t, "", args...)
		if r.code == 0 {
			t.Errorf("%v: exit 0", args)
		}
		if r.stderr == "" {
			t.Errorf("%v: no error text", args)
		}
	}
	if r := run(t, "", "plan", "-f", "/nonexistent.yaml"); r.code != ExitError || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("%+v", r)
	}
}

func TestPolicyMatrix(t *testing.T) {
	r := run(t, "", "policy", "matrix", "-f", "../../examples/policy.yaml")
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	golden.Check(t, "policy-matrix.txt", []byte(r.stdout))
	r = run(t, "", "policy", "matrix", "-f", "../../examples/policy.yaml", "-o", "json")
	if r.code != 0 || !strings.Contains(r.stdout, `"strongOnly": true`) {
		t.Fatalf("%d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := run(t, "", "policy", "matrix"); r.code != ExitUsage {
		t.Fatalf("no source: %+v", r)
	}
	if r := run(t, "", "policy", "matrix", "--nodes", "--probe", "sctp/1"); r.code != ExitUsage {
		t.Fatalf("bad probe: %+v", r)
	}
}

func TestRenderCiliumPolicies(t *testing.T) {
	dir := t.TempDir()
	r := run(t, "", "render", "cilium-policies", "-f", "../../examples/policy.yaml", "--out", dir)
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	for _, f := range []string{"eu-central-data.yaml", "eu-central-web.yaml", "us-east-edge.yaml", "us-east-web.yaml"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || !strings.Contains(string(b), "kind: CiliumClusterwideNetworkPolicy") {
			t.Errorf("%s: %v\n%s", f, err, b)
		}
	}
	r = run(t, "", "render", "cilium-policies", "-f", "../../examples/policy.yaml", "--cluster", "us-east/edge", "--namespace", "edge")
	if r.code != 0 || strings.Count(r.stdout, "kind: CiliumNetworkPolicy") != 2 || !strings.Contains(r.stdout, "namespace: edge") {
		t.Fatalf("%d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := run(t, "", "render", "cilium-policies", "-f", "../../examples/policy.yaml", "--cluster", "nowhere/x"); r.code != ExitError || !strings.Contains(r.stderr, "no cluster") {
		t.Fatalf("unknown cluster: %+v", r)
	}
	if r := run(t, "", "render", "cilium-policies", "-f", "../../examples/small.yaml"); r.code != ExitError || !strings.Contains(r.stderr, "no policy section") {
		t.Fatalf("no policy: %+v", r)
	}
}

// TestWGQuickConfig renders a client configuration and has the real
// wg-quick parse it (strip turns it into what wg setconf takes).
func TestWGQuickConfig(t *testing.T) {
	cfg := api.ClientConfig{
		Client:    api.Client{Name: "alice", Region: "eu-central", Segment: "ops"},
		Addresses: []string{"100.64.16.1/32"}, MTU: 1340, PeerName: "eu-central-gw1",
		PeerEndpoint: "203.0.113.1:51820", AllowedIPs: []string{"10.0.0.0/8", "100.64.0.0/10"}, PersistentKeepalive: 25,
	}
	priv, _ := netmap.GeneratePrivateKey()
	cfg.PeerPublicKey = priv.PublicKey()
	text := WGQuick(cfg, priv.String())
	for _, want := range []string{"[Interface]", "PrivateKey = " + priv.String(), "Address = 100.64.16.1/32", "MTU = 1340", "[Peer]",
		"Endpoint = 203.0.113.1:51820", "AllowedIPs = 10.0.0.0/8, 100.64.0.0/10", "PersistentKeepalive = 25"} {
		if !strings.Contains(text, want) {
			t.Errorf("config lacks %q:\n%s", want, text)
		}
	}
	testenv.RequireBinary(t, "wg-quick")
	path := filepath.Join(t.TempDir(), "smc0.conf")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("wg-quick", "strip", path).CombinedOutput()
	if err != nil {
		t.Fatalf("wg-quick strip: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "PublicKey = "+cfg.PeerPublicKey.String()) || strings.Contains(string(out), "Address") {
		t.Errorf("wg-quick strip gave:\n%s", out)
	}
}

func TestRenderCilium(t *testing.T) {
	r := run(t, "", "render", "cilium", "-f", "../../examples/small.yaml", "--cluster", "eu-central/prod")
	if r.code != 0 || !strings.Contains(r.stdout, "name: eu-central-prod") || !strings.Contains(r.stdout, "routingMode: native") {
		t.Fatalf("%d %s %s", r.code, r.stdout, r.stderr)
	}
	dir := t.TempDir()
	r = run(t, "", "render", "cilium", "-f", "../../examples/dual-stack.yaml", "--cluster", "ap-south/prod", "--out", dir)
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	for _, f := range []string{"cilium-values.yaml", "cilium-nodeconfig.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	for _, args := range [][]string{
		{"render", "cilium", "-f", "../../examples/small.yaml"},
		{"render", "cilium", "--cluster", "eu-central/prod"},
	} {
		if r := run(t, "", args...); r.code != ExitUsage {
			t.Errorf("%v: %+v", args, r)
		}
	}
	if r := run(t, "", "render", "cilium", "-f", "../../examples/small.yaml", "--cluster", "eu-central/none"); r.code != ExitError || !strings.Contains(r.stderr, "no cluster eu-central/none") {
		t.Errorf("unknown cluster: %+v", r)
	}
}

// TestRenderAllIsStable: two runs write identical trees; a cluster that
// left the spec loses its directory.
func TestRenderAllIsStable(t *testing.T) {
	dir := t.TempDir()
	read := func() map[string]string {
		out := map[string]string{}
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				b, _ := os.ReadFile(p)
				out[strings.TrimPrefix(p, dir)] = string(b)
			}
			return nil
		})
		return out
	}
	if r := run(t, "", "render", "all", "-f", "../../examples/policy.yaml", "--out", dir); r.code != 0 {
		t.Fatal(r.stderr)
	}
	first := read()
	if len(first) != 9 { // plan + 4 clusters × (values, policies)
		t.Fatalf("%d files: %v", len(first), first)
	}
	if r := run(t, "", "render", "all", "-f", "../../examples/policy.yaml", "--out", dir, "--state", filepath.Join(dir, "plan.json")); r.code != 0 {
		t.Fatal(r.stderr)
	}
	second := read()
	for k, v := range first {
		if second[k] != v {
			t.Errorf("%s differs between runs", k)
		}
	}
	text, _ := os.ReadFile("../../examples/policy.yaml")
	fewer := strings.Replace(string(text), "      - {name: edge, maxNodes: 100, maxPodsPerNode: 32, admitWithoutTPM: true}\n", "", 1)
	fewer = strings.Replace(fewer, "    - name: edge\n      match: {clusters: [us-east/edge]}\n", "    - name: edge\n      match: {regions: [us-east], labels: {tier: edge}}\n", 1)
	if r := run(t, fewer, "render", "all", "-f", "-", "--out", dir, "--state", filepath.Join(dir, "plan.json")); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "clusters", "us-east-edge")); !os.IsNotExist(err) {
		t.Errorf("the removed cluster's directory is still there: %v", err)
	}
}

// TestAgentRoleHostWithAttestOnly: --help offers --role host with
// --attest-only; it was refused (issue 17, item 6).
func TestAgentRoleHostWithAttestOnly(t *testing.T) {
	dir := t.TempDir()
	r := run(t, "", "agent", "--attest-only", "--role", "host", "--data-dir", dir, "--wireguard-key-from", "sm-no-such-if0", "--controller", "https://127.0.0.1:1")
	if strings.Contains(r.stderr, "--role") {
		t.Errorf("--attest-only --role host refused: %s", r.stderr)
	}
	if r := run(t, "", "agent", "--role", "host", "--data-dir", dir); r.code == 0 || !strings.Contains(r.stderr, "go together") {
		t.Errorf("--role host without --attest-only: %+v", r)
	}
}

// TestIssue18LargeSpecFileSize: a spec file over the limit is reported
// with its real size (a 52 MB file was "4194305 bytes").
func TestIssue18LargeSpecFileSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 52_000_000); err != nil {
		t.Fatal(err)
	}
	r := run(t, "", "validate", "-f", path)
	if r.code == 0 || !strings.Contains(r.stderr, "52,000,000 bytes") || strings.Contains(r.stderr, "4194305") {
		t.Errorf("exit %d: %s", r.code, r.stderr)
	}
	// And mtu: an MTU above 65535 is not "too small".
	r = run(t, "", "mtu", "--underlay-mtu", "65536")
	if r.code == 0 || strings.Contains(r.stderr, "too small") {
		t.Errorf("mtu --underlay-mtu 65536: exit %d: %s", r.code, r.stderr)
	}
}
