package ciliumcheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/cilium/pkg/option"
	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/cilium"
	"github.com/statemesh/statemesh/internal/cilium/ciliumtest"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/testenv"
)

// load parses a spec and plans it.
func load(t *testing.T, text string) (*spec.Mesh, *plan.Plan) {
	t.Helper()
	m, err := spec.Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Compute(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m, p
}

func readExample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../../examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// clusters lists every REGION/CLUSTER of a plan.
func clusters(p *plan.Plan) []string {
	var out []string
	for _, r := range p.Regions {
		for _, c := range r.Clusters {
			out = append(out, r.Name+"/"+c.Name)
		}
	}
	return out
}

// ciliumConfig renders Cilium's own chart (the module's, with helm) with a
// cluster's rendered values and returns its cilium-config ConfigMap: the
// options the agent runs with.
func ciliumConfig(t *testing.T, rv cilium.RenderedValues) map[string]string {
	t.Helper()
	helm := testenv.RequireBinary(t, "helm")
	b, err := cilium.ValuesYAML(rv, "check")
	if err != nil {
		t.Fatal(err)
	}
	vf := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(vf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(helm, "template", "cilium", ciliumtest.Chart(t), "--namespace", "kube-system",
		"--kube-version", "1.33.0", "-f", vf, "--show-only", "templates/cilium-configmap.yaml").CombinedOutput()
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	var doc struct {
		Kind     string
		Metadata struct{ Name string }
		Data     map[string]string
	}
	if err := yaml.Unmarshal(out, &doc); err != nil || doc.Metadata.Name != "cilium-config" {
		t.Fatalf("no cilium-config in helm's output (%v):\n%s", err, out)
	}
	return doc.Data
}

// setAgentOptions sets the Cilium agent options policy parsing depends on
// from a cilium-config, as the agent reads them (keys the chart leaves out
// keep Cilium's defaults).
func setAgentOptions(t *testing.T, cfg map[string]string) {
	t.Helper()
	for key, dst := range map[string]*bool{
		option.EnableNodeSelectorLabels:     &option.Config.EnableNodeSelectorLabels,
		option.EnableICMPRules:              &option.Config.EnableICMPRules,
		option.EnableL7Proxy:                &option.Config.EnableL7Proxy,
		option.EnableNonDefaultDenyPolicies: &option.Config.EnableNonDefaultDenyPolicies,
		option.EnableExtendedIPProtocols:    &option.Config.EnableExtendedIPProtocols,
	} {
		v, ok := cfg[key]
		if !ok {
			continue
		}
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			t.Fatalf("cilium-config %s = %q: %v", key, v, err)
		}
		*dst = b
	}
}
