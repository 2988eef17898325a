package cilium_test

import (
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/cilium"
	"github.com/statemesh/statemesh/internal/cilium/ciliumtest"
	"github.com/statemesh/statemesh/internal/golden"
	"github.com/statemesh/statemesh/internal/lab"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
)

func render(t *testing.T, text string, opts cilium.Options) []cilium.Object {
	t.Helper()
	m, err := spec.Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Compute(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := cilium.Policies(m, p, opts)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func example(t *testing.T) string {
	b, err := os.ReadFile("../../examples/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPoliciesValidAgainstCRDs renders the example's and the lab's policies,
// clusterwide and namespaced, and validates every object, as it would be
// sent to the API server (the YAML read back), against Cilium's own CRD
// schema.
func TestPoliciesValidAgainstCRDs(t *testing.T) {
	labCfg := lab.Config{Policy: true}
	labCfg.SetDefaults()
	n := 0
	for _, text := range []string{example(t), labCfg.Spec()} {
		for _, ns := range []string{"", "shop"} {
			objs := render(t, text, cilium.Options{Namespace: ns})
			if len(objs) == 0 {
				t.Fatal("nothing rendered")
			}
			out, err := cilium.YAML(objs)
			if err != nil {
				t.Fatal(err)
			}
			dec := yaml.NewDecoder(strings.NewReader(string(out)))
			for {
				var obj map[string]any
				if err := dec.Decode(&obj); err != nil {
					if err.Error() == "EOF" {
						break
					}
					t.Fatal(err)
				}
				kind, _ := obj["kind"].(string)
				if err := ciliumtest.Validate(t, kind, obj); err != nil {
					t.Errorf("%s %v is not a valid %s: %v", kind, obj["metadata"], cilium.APIVersion, err)
				}
				n++
			}
		}
	}
	t.Logf("%d objects valid against Cilium %s's CRDs", n, cilium.Version)
}

// TestSchemaRefusesMistakes shows the schema check can fail: objects with
// an unknown field, a bad protocol or a bad label are refused.
func TestSchemaRefusesMistakes(t *testing.T) {
	objs := render(t, example(t), cilium.Options{})
	good := objs[0]
	if err := ciliumtest.Validate(t, good.Kind, good); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(o map[string]any){
		"unknown field": func(o map[string]any) { o["spec"].(map[string]any)["ingres"] = []any{} },
		"bad protocol": func(o map[string]any) {
			o["spec"].(map[string]any)["ingress"] = []any{map[string]any{"toPorts": []any{map[string]any{"ports": []any{map[string]any{"port": "80", "protocol": "ICMP"}}}}}}
		},
		"bad label value": func(o map[string]any) {
			o["spec"].(map[string]any)["endpointSelector"] = map[string]any{"matchLabels": map[string]any{"app": "not a label!"}}
		},
	} {
		b, _ := yaml.Marshal(good)
		var o map[string]any
		if err := yaml.Unmarshal(b, &o); err != nil {
			t.Fatal(err)
		}
		mutate(o)
		if err := ciliumtest.Validate(t, good.Kind, o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestPoliciesGolden pins the rendering of the example for one cluster.
func TestPoliciesGolden(t *testing.T) {
	objs := render(t, example(t), cilium.Options{Cluster: "eu-central/data"})
	out, err := cilium.YAML(objs)
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "eu-central-data.yaml", out)
}

// TestPoliciesSemantics checks what the objects say: sources carry
// cluster identity, isolated segments admit no members, clients come from
// their segment's block, ports and ICMP are separate.
func TestPoliciesSemantics(t *testing.T) {
	objs := render(t, example(t), cilium.Options{})
	by := map[string]cilium.Object{}
	for _, o := range objs {
		by[o.Cluster+" "+o.Metadata.Name] = o
	}
	if _, ok := by["us-east/edge statemesh-segment-frontend"]; ok {
		t.Error("frontend pods cannot run in us-east/edge")
	}
	if _, ok := by["eu-central/web statemesh-segment-ops"]; ok {
		t.Error("a clients-only segment has no pods")
	}
	be, ok := by["eu-central/data statemesh-segment-backend"]
	if !ok {
		t.Fatalf("no backend policy in eu-central/data; have %v", keys(by))
	}
	if v := by["eu-central/data statemesh-segment-vault"]; len(v.Spec.IngressDeny) != 1 || v.Spec.IngressDeny[0].FromNodes[0].MatchLabels[cilium.NodeClassLabel] != "weak" {
		t.Errorf("the sensitive vault does not deny weak nodes: %+v", v.Spec.IngressDeny)
	}
	if len(be.Spec.IngressDeny) != 0 {
		t.Errorf("backend is not sensitive but denies %+v", be.Spec.IngressDeny)
	}
	if got := be.Spec.EndpointSelector.MatchLabels["app"]; got != "orders" {
		t.Errorf("backend selects app=%q", got)
	}
	var sawPorts, sawICMP, sawSelf bool
	for _, ir := range be.Spec.Ingress {
		if len(ir.FromEndpoints) != 1 {
			t.Fatalf("ingress %+v", ir)
		}
		sel := ir.FromEndpoints[0]
		if len(sel.MatchExpressions) != 1 || sel.MatchExpressions[0].Key != cilium.ClusterLabel {
			t.Errorf("source without cluster identity: %+v", sel)
		}
		switch {
		case len(ir.ToPorts) > 0:
			sawPorts = true
			if p := ir.ToPorts[0].Ports[0]; p.Port != "8080" || p.Protocol != "TCP" {
				t.Errorf("port %+v", p)
			}
			if vs := sel.MatchExpressions[0].Values; strings.Join(vs, ",") != "eu-central-web,us-east-web" {
				t.Errorf("frontend clusters %v", vs)
			}
		case len(ir.ICMPs) > 0:
			sawICMP = true
		default:
			sawSelf = true
		}
	}
	if !sawPorts || !sawICMP || !sawSelf {
		t.Errorf("backend ingress lacks ports %v icmp %v members %v", sawPorts, sawICMP, sawSelf)
	}
	fe := by["us-east/web statemesh-segment-frontend"]
	var clientRules int
	for _, ir := range fe.Spec.Ingress {
		var clients []string
		for _, c := range ir.FromCIDRSet {
			clients = append(clients, c.CIDR)
		}
		if len(clients) == 0 {
			continue
		}
		clientRules++
		if strings.Join(clients, ",") != "100.64.16.0/24,100.66.16.0/24" {
			t.Errorf("ops clients come from %v", clients)
		}
	}
	if clientRules != 2 { // ops-ssh: tcp/22, and icmp
		t.Errorf("%d ingress rules for clients, want 2", clientRules)
	}
	if _, err := cilium.Policies(mustParse(t, example(t)), mustPlan(t, example(t)), cilium.Options{Cluster: "mars/x"}); err == nil {
		t.Error("unknown cluster accepted")
	}
}

func keys(m map[string]cilium.Object) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func mustParse(t *testing.T, text string) *spec.Mesh {
	m, err := spec.Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustPlan(t *testing.T, text string) *plan.Plan {
	p, err := plan.Compute(mustParse(t, text), nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestIssue18ClientsWithMatchSplitsSources: a clients segment that also
// matches nodes is a source of pods and of client CIDRs; Cilium refuses an
// ingress rule that combines fromEndpoints and fromCIDRSet, so they are
// rendered as two rules with the same ports (Cilium's own parser checks
// every rendered policy in internal/cilium/ciliumcheck).
func TestIssue18ClientsWithMatchSplitsSources(t *testing.T) {
	text := strings.Replace(example(t), "  rules:\n",
		"    - {name: ops2, clients: true, match: {clusters: [us-east/web]}}\n  rules:\n    - {name: ops2-orders, from: ops2, to: backend, ports: [\"tcp/5432\"]}\n", 1)
	objs := render(t, text, cilium.Options{Cluster: "eu-central/data"})
	var endpoints, cidrs int
	for _, o := range objs {
		for _, ir := range o.Spec.Ingress {
			if len(ir.FromEndpoints) > 0 && len(ir.FromCIDRSet) > 0 {
				t.Errorf("%s: one ingress rule with fromEndpoints and fromCIDRSet: %+v", o.Metadata.Name, ir)
			}
			if len(ir.ToPorts) == 1 && ir.ToPorts[0].Ports[0].Port == "5432" {
				if len(ir.FromEndpoints) > 0 {
					endpoints++
				}
				if len(ir.FromCIDRSet) > 0 {
					cidrs++
				}
			}
		}
	}
	if endpoints != 1 || cidrs != 1 {
		t.Errorf("ops2 -> backend: %d pod rules and %d client rules, want one each", endpoints, cidrs)
	}
}
