package cilium_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/cilium"
	"github.com/statemesh/statemesh/internal/cilium/ciliumtest"
	"github.com/statemesh/statemesh/internal/golden"
	"github.com/statemesh/statemesh/internal/mtu"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/testenv"
)

func load(t testing.TB, file string) (*spec.Mesh, *plan.Plan) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../examples", file))
	if err != nil {
		t.Fatal(err)
	}
	m, err := spec.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Compute(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m, p
}

func valuesYAML(t testing.TB, m *spec.Mesh, p *plan.Plan, cluster string) (cilium.RenderedValues, []byte) {
	t.Helper()
	rv, err := cilium.ClusterValuesFor(m, p, cluster)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cilium.ValuesYAML(rv, m.Metadata.Name)
	if err != nil {
		t.Fatal(err)
	}
	return rv, b
}

// The four kinds of cluster the issue names, pinned.
var goldenCases = []struct{ name, file, cluster string }{
	{"native", "small.yaml", "eu-central/prod"},
	{"vxlan", "vxlan.yaml", "eu-west/data"},
	{"ipv6-only", "design-limit-ipv6.yaml", "eu-central/c01"},
	{"dual-stack", "dual-stack.yaml", "eu-north/batch"},
}

func TestValuesGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			m, p := load(t, tc.file)
			_, b := valuesYAML(t, m, p, tc.cluster)
			golden.Check(t, "values-"+tc.name+".yaml", b)
		})
	}
}

// TestValuesPassTheChartSchema validates the values of every cluster of
// every example against values.schema.json of Cilium's own chart.
func TestValuesPassTheChartSchema(t *testing.T) {
	n := 0
	for _, file := range []string{"small.yaml", "vxlan.yaml", "dual-stack.yaml", "policy.yaml", "design-limit-ipv6.yaml"} {
		m, p := load(t, file)
		for _, r := range p.Regions {
			for _, c := range r.Clusters {
				_, b := valuesYAML(t, m, p, r.Name+"/"+c.Name)
				if err := ciliumtest.ValidateValues(t, b); err != nil {
					t.Fatalf("%s %s/%s: %v\n%s", file, r.Name, c.Name, err, b)
				}
				n++
			}
		}
	}
	t.Logf("%d clusters' values pass Cilium %s's chart schema", n, cilium.Version)
	// The check can fail.
	m, p := load(t, "small.yaml")
	_, b := valuesYAML(t, m, p, "eu-central/prod")
	bad := strings.Replace(string(b), "\nMTU: 1440", "\nMTU: \"1440 bytes\"", 1)
	if bad == string(b) {
		t.Fatalf("test setup: no MTU line in\n%s", b)
	}
	if err := ciliumtest.ValidateValues(t, []byte(bad)); err == nil {
		t.Error("a string MTU passed the schema")
	}
	if err := ciliumtest.ValidateValues(t, append(b, "routingMod: native\n"...)); err == nil {
		t.Error("a misspelt key passed")
	}
}

// TestValuesMTU: in the design-limit example, the values' MTU equals the
// plan's pod MTU in every cluster (native routing adds nothing); with
// VXLAN, Cilium takes its 50 bytes from the values' MTU and pods get the
// plan's pod MTU.
func TestValuesMTU(t *testing.T) {
	m, p := load(t, "design-limit-ipv6.yaml")
	n := 0
	for _, r := range p.Regions {
		for _, c := range r.Clusters {
			rv, err := cilium.ClusterValuesFor(m, p, r.Name+"/"+c.Name)
			if err != nil {
				t.Fatal(err)
			}
			if rv.Values.MTU != c.PodMTU || rv.PodMTU != c.PodMTU {
				t.Fatalf("%s/%s: values MTU %d, plan pod MTU %d", r.Name, c.Name, rv.Values.MTU, c.PodMTU)
			}
			n++
		}
	}
	if n != 200 {
		t.Fatalf("%d clusters, want 200", n)
	}
	m, p = load(t, "vxlan.yaml")
	for _, c := range p.Regions[0].Clusters {
		rv, _ := cilium.ClusterValuesFor(m, p, "eu-west/"+c.Name)
		if got := rv.Values.MTU - mtu.EncapOverhead(spec.RoutingVXLAN, mtu.IPv4, 0); got != c.PodMTU || rv.Values.RoutingMode != "tunnel" || rv.Values.TunnelProtocol != "vxlan" {
			t.Errorf("vxlan %s: MTU %d - 50 = %d, plan pod MTU %d", c.Name, rv.Values.MTU, got, c.PodMTU)
		}
	}
	// Operators on a smaller MTU get a CiliumNodeConfig, valid against its CRD.
	m, p = load(t, "dual-stack.yaml")
	rv, _ := cilium.ClusterValuesFor(m, p, "ap-south/prod")
	nc := cilium.OperatorNodeConfig(rv)
	if nc == nil || nc.Spec.Defaults["mtu"] != "1320" {
		t.Fatalf("operator node config %+v", nc)
	}
	if err := ciliumtest.ValidateCRD(t, "CiliumNodeConfig", nc); err != nil {
		t.Fatal(err)
	}
}

func TestMeshPeers(t *testing.T) {
	check := func(m *spec.Mesh, p *plan.Plan, want map[string]string) {
		t.Helper()
		for cluster, w := range want {
			got, err := cilium.MeshPeers(m, p, cluster)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, ",") != w {
				t.Errorf("%s: %s meshes with %v, want %s", m.Metadata.Name, cluster, got, w)
			}
		}
	}
	// The example's vault segment is selected by label: its pods may run
	// in every cluster and talk to each other, so every cluster meshes
	// with every other.
	m, p := load(t, "policy.yaml")
	check(m, p, map[string]string{
		"eu-central/data": "eu-central/web,us-east/edge,us-east/web",
		"us-east/edge":    "eu-central/data,eu-central/web,us-east/web",
	})
	// With vault confined to eu-central/data: the region's clusters, and
	// who talks to whom.
	text, err := os.ReadFile("../../examples/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	confined := strings.Replace(string(text), "      match: {labels: {app: vault}}\n", "      match: {clusters: [eu-central/data], labels: {app: vault}}\n", 1)
	if confined == string(text) {
		t.Fatal("test setup: vault segment not found")
	}
	m, err = spec.Parse([]byte(confined))
	if err != nil {
		t.Fatal(err)
	}
	p, _ = plan.Compute(m, nil)
	check(m, p, map[string]string{
		"eu-central/data": "eu-central/web,us-east/web", // frontend pods reach backend pods
		"us-east/edge":    "eu-central/web,us-east/web", // edge pods reach frontend pods
		"us-east/web":     "eu-central/data,eu-central/web,us-east/edge",
	})
	m, p = load(t, "small.yaml") // no policy: the region's clusters only
	check(m, p, map[string]string{"eu-central/prod": "eu-central/staging", "us-east/prod": ""})
}

func TestValuesBadInput(t *testing.T) {
	m, p := load(t, "small.yaml")
	for _, c := range []string{"eu-central", "mars/prod", "eu-central/nope"} {
		if _, err := cilium.ClusterValuesFor(m, p, c); err == nil {
			t.Errorf("%q accepted", c)
		}
	}
}

// TestHelmTemplate renders the real Cilium chart (from the module) with
// helm and each golden case's values; CI installs helm.
func TestHelmTemplate(t *testing.T) {
	helm := testenv.RequireBinary(t, "helm")
	chart := ciliumtest.Chart(t)
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			m, p := load(t, tc.file)
			rv, b := valuesYAML(t, m, p, tc.cluster)
			vf := filepath.Join(t.TempDir(), "values.yaml")
			if err := os.WriteFile(vf, b, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(helm, "template", "cilium", chart, "--namespace", "kube-system", "--kube-version", "1.33.0", "-f", vf).CombinedOutput()
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, tail(string(out)))
			}
			cfg := configMap(t, out)
			for k, want := range map[string]string{
				"cluster-name": rv.Values.Cluster.Name, "mtu": itoa(rv.Values.MTU), "ipam": "cluster-pool",
				"routing-mode": rv.Values.RoutingMode, "enable-bpf-masquerade": "true",
			} {
				if cfg[k] != want {
					t.Errorf("cilium-config %s = %q, want %q", k, cfg[k], want)
				}
			}
		})
	}
}

func itoa(n int) string { return strings.TrimSpace(strings.Replace(yamlString(n), "\n", "", -1)) }

func yamlString(v any) string { b, _ := yaml.Marshal(v); return string(b) }

func tail(s string) string {
	if len(s) > 3000 {
		return s[len(s)-3000:]
	}
	return s
}

// configMap finds the cilium-config ConfigMap in helm's output.
func configMap(t *testing.T, out []byte) map[string]string {
	dec := yaml.NewDecoder(strings.NewReader(string(out)))
	for {
		var doc struct {
			Kind     string
			Metadata struct{ Name string }
			Data     map[string]string
		}
		if err := dec.Decode(&doc); err != nil {
			t.Fatalf("no cilium-config in helm's output: %v", err)
		}
		if doc.Kind == "ConfigMap" && doc.Metadata.Name == "cilium-config" {
			return doc.Data
		}
	}
}
