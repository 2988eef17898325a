package ciliumcheck

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2/validator"
	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/statemesh/statemesh/internal/cilium"
	"github.com/statemesh/statemesh/internal/lab"
)

// clientsWithMatch is issue 18 item 1's reproduction: a clients segment
// that also matches a cluster's nodes, and rules from it. Before the fix
// its rules held fromEndpoints and fromCIDRSet in one ingress rule, which
// Cilium refuses ("combining FromCIDRSet and FromEndpoints is not
// supported yet") while statemesh validate called the spec valid.
const clientsWithMatch = `
    - name: ops2
      clients: true
      match: {clusters: [us-east/web]}
`

func policySpecs(t *testing.T) map[string]string {
	labCfg := lab.Config{Policy: true}
	labCfg.SetDefaults()
	pol := readExample(t, "policy.yaml")
	withOps2 := strings.Replace(pol, "  rules:\n", "  rules:\n    - {name: ops2-orders, from: ops2, to: backend, ports: [\"tcp/5432\", icmp]}\n    - {name: ops2-all, from: ops2, to: frontend, ports: [any]}\n", 1)
	withOps2 = strings.Replace(withOps2, "  rules:\n", strings.TrimPrefix(clientsWithMatch, "\n")+"  rules:\n", 1)
	if withOps2 == pol || !strings.Contains(withOps2, "ops2-orders") {
		t.Fatal("could not build the ops2 spec from examples/policy.yaml")
	}
	return map[string]string{
		"examples/policy.yaml":        pol,
		"lab":                         labCfg.Spec(),
		"issue-18-clients-with-match": withOps2,
	}
}

// TestPoliciesAcceptedByCilium renders every policy of the example, lab
// and regression specs, clusterwide and namespaced, and hands each object
// as the API server would get it (the rendered YAML) to Cilium v1.20's own
// CRD validator (validator.NPValidator: the structural schema and unknown
// fields) and to its parser (CiliumNetworkPolicy.Parse, which runs
// api.Rule.Sanitize), with the agent options that the cluster's rendered
// Helm values give Cilium (its chart rendered with helm).
func TestPoliciesAcceptedByCilium(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	v, err := validator.NewNPValidator(log)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for name, text := range policySpecs(t) {
		m, p := load(t, text)
		if m.Policy == nil {
			continue
		}
		for _, key := range clusters(p) {
			rv, err := cilium.ClusterValuesFor(m, p, key)
			if err != nil {
				t.Fatal(err)
			}
			setAgentOptions(t, ciliumConfig(t, rv))
			for _, ns := range []string{"", "shop"} {
				objs, err := cilium.Policies(m, p, cilium.Options{Cluster: key, Namespace: ns})
				if err != nil {
					t.Fatal(err)
				}
				out, err := cilium.YAML(objs)
				if err != nil {
					t.Fatal(err)
				}
				dec := yaml.NewDecoder(strings.NewReader(string(out)))
				for {
					var obj map[string]any
					if err := dec.Decode(&obj); err != nil {
						break
					}
					n++
					js, err := json.Marshal(obj)
					if err != nil {
						t.Fatal(err)
					}
					if err := check(v, log, rv.Values.Cluster.Name, js); err != nil {
						t.Errorf("%s, cluster %s, %s %v: Cilium refuses it: %v\n%s", name, key, obj["kind"], obj["metadata"], err, js)
					}
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no policy rendered")
	}
	t.Logf("%d rendered policies accepted by Cilium's validator and parser", n)
}

// check validates one object (JSON) as Cilium does.
func check(v *validator.NPValidator, log *slog.Logger, clusterName string, js []byte) error {
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return err
	}
	if u.GetKind() == cilium.KindNamespaced {
		if err := v.ValidateCNP(u); err != nil {
			return err
		}
		var cnp ciliumv2.CiliumNetworkPolicy
		if err := json.Unmarshal(js, &cnp); err != nil {
			return err
		}
		_, err := cnp.Parse(log, clusterName)
		return err
	}
	if err := v.ValidateCCNP(u); err != nil {
		return err
	}
	var ccnp ciliumv2.CiliumClusterwideNetworkPolicy
	if err := json.Unmarshal(js, &ccnp); err != nil {
		return err
	}
	_, err := ccnp.Parse(log, clusterName)
	return err
}

// TestCheckRefusesCombinedSources makes sure the check above is the one
// that caught issue 18 item 1: a rule combining fromEndpoints and
// fromCIDRSet is refused by it.
func TestCheckRefusesCombinedSources(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	v, err := validator.NewNPValidator(log)
	if err != nil {
		t.Fatal(err)
	}
	js := `{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"x"},
	"spec":{"endpointSelector":{"matchLabels":{"a":"b"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"a":"b"}}],"fromCIDRSet":[{"cidr":"100.64.0.0/24"}]}]}}`
	if err := check(v, log, "c", []byte(js)); err == nil || !strings.Contains(err.Error(), "combining") {
		t.Fatalf("combined sources: %v, want Cilium's refusal", err)
	}
}
