// Package archtest keeps the architecture honest: the layering of our own
// packages (which layer may import which, even indirectly) and the pure
// core's freedom from kernel, store, network, TPM and process packages
// (STYLE.md rule 1). docs/architecture.md draws the same layers.
package archtest

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/statemesh/statemesh/"

// pure lists the packages that must stay free of effects.
var pure = []string{
	"internal/spec",
	"internal/plan",
	"internal/mtu",
	"internal/netmap",
	"internal/topology",
	"internal/policy",
	"internal/cilium",
	"internal/dataplane/wgplan",
	"internal/dataplane/guardplan",
	"internal/dataplane/fwplan",
	"internal/doctor",
	"internal/jointoken",
}

// kernelStoreTPM are import path prefixes the pure core must not reach,
// even indirectly.
var kernelStoreTPM = []string{
	"os/exec",
	"net/http",
	"github.com/vishvananda/",
	"golang.zx2c4.com/wireguard",
	"github.com/google/nftables",
	"sigs.k8s.io/knftables",
	"github.com/mdlayher/",
	"go.etcd.io/",
	"github.com/google/go-tpm",
	"github.com/google/go-attestation",
}

// sourceOfTruth is the controller side: the node side must not depend on
// its implementation, only on the wire contract (api, jointoken, attest).
var sourceOfTruth = []string{
	"internal/controller", "internal/store", "internal/server", "internal/netmaker", "internal/topology",
}

// rule: packages whose path starts with From must not depend, directly or
// not, on a package whose path starts with one of Not.
type rule struct {
	From string
	// Exact: only the package From itself, not the packages inside it
	// (the pure core's test helpers, such as cilium/ciliumtest, may run
	// programs).
	Exact bool
	Not   []string
	Why   string
}

// layers is the layering, from the bottom up:
//
//	pure core (spec, plan, mtu, netmap, topology, policy, cilium, wgplan, doctor, jointoken)
//	wire contract (api, attest, jointoken) and kernel edges (dataplane, birdcfg, tpm)
//	node side (apiclient, agent)  |  source of truth (store, controller, netmaker) → server
//	commands (cli, lab) and test harnesses (ctltest)
var layers = func() []rule {
	var rs []rule
	for _, p := range pure {
		rs = append(rs,
			rule{From: p, Exact: true, Not: kernelStoreTPM, Why: "the pure core has no effects (move the effect to an edge package)"},
			rule{From: p, Exact: true, Not: []string{"internal/store", "internal/controller", "internal/server", "internal/agent", "internal/apiclient",
				"internal/dataplane/wg", "internal/dataplane/link", "internal/dataplane/firewall", "internal/cli", "internal/lab", "internal/netmaker"},
				Why: "the pure core depends on no effectful package of ours"})
	}
	return append(rs,
		rule{From: "internal/agent", Not: sourceOfTruth, Why: "the node agent speaks the wire contract, not the controller's implementation"},
		rule{From: "internal/apiclient", Not: sourceOfTruth, Why: "the API client speaks the wire contract, not the controller's implementation"},
		rule{From: "internal/dataplane", Not: append([]string{"internal/agent", "internal/apiclient", "internal/cli", "internal/lab"}, sourceOfTruth...),
			Why: "the kernel layer is below the agent: it must not reach up into it"},
		rule{From: "internal/controller", Not: []string{"internal/server", "internal/apiclient", "internal/agent", "internal/dataplane", "internal/cli", "internal/lab", "internal/ctltest"},
			Why: "the source of truth is below its server and knows nothing of nodes' code"},
		rule{From: "internal/controller", Not: []string{"internal/netmaker", "internal/netmakersync"},
			Why: "third-party backends (Netmaker) run beside the controller, on its registry interface, not inside it"},
		rule{From: "internal/store", Not: []string{"internal/controller", "internal/server", "internal/agent", "internal/cli"}, Why: "stores are below the controller"},
		rule{From: "internal/server", Not: []string{"internal/cli", "internal/lab", "internal/agent", "internal/ctltest"}, Why: "the server is below the commands"},
	)
}()

// violations returns one line per dependency that breaks a rule; deps maps
// each package (path relative to the module, or a standard/third-party
// path) to everything it depends on, directly or not.
func violations(deps map[string][]string, rules []rule) []string {
	var out []string
	pkgs := make([]string, 0, len(deps))
	for p := range deps {
		pkgs = append(pkgs, p)
	}
	slices.Sort(pkgs)
	for _, p := range pkgs {
		for _, r := range rules {
			if p != r.From && (r.Exact || !under(p, r.From)) {
				continue
			}
			for _, d := range deps[p] {
				for _, n := range r.Not {
					if under(d, n) {
						out = append(out, p+" → "+d+": "+r.Why)
					}
				}
			}
		}
	}
	return out
}

// under reports whether path is prefix itself or inside it.
func under(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, strings.TrimSuffix(prefix, "/")+"/") ||
		(!strings.HasPrefix(prefix, "internal/") && strings.HasPrefix(path, prefix))
}

// moduleDeps reads every package's transitive dependencies with go list
// (test files excluded: harnesses may reach across layers).
func moduleDeps(t *testing.T) map[string][]string {
	cmd := exec.Command("go", "list", "-deps=false", "-json", mod+"...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		var ds []string
		for _, d := range p.Deps {
			ds = append(ds, strings.TrimPrefix(d, mod))
		}
		deps[strings.TrimPrefix(p.ImportPath, mod)] = ds
	}
	return deps
}

func TestLayering(t *testing.T) {
	deps := moduleDeps(t)
	for _, p := range pure {
		if _, ok := deps[p]; !ok {
			t.Errorf("pure package %s does not exist (renamed? update the rules)", p)
		}
	}
	for _, v := range violations(deps, layers) {
		t.Error(v)
	}
}

// The rules catch each wrong-way import the code had before the layers
// were set: the agent and the API client importing the controller (for
// the join token and the batch digest), the kernel layer importing the
// agent's plan package, the controller's test harness importing the
// server, the controller running the Netmaker driver, and knftables in the
// pure core.
func TestRulesCatchTheOldWrongWayImports(t *testing.T) {
	old := map[string][]string{
		"internal/agent":              {"internal/apiclient", "internal/controller", "internal/store", "internal/topology"},
		"internal/apiclient":          {"internal/controller", "internal/api"},
		"internal/dataplane/wg":       {"internal/agent/plan", "internal/netmap"},
		"internal/controller/ctltest": {"internal/server", "internal/apiclient", "internal/controller"},
		"internal/dataplane/wgplan":   {"sigs.k8s.io/knftables"},
		"internal/doctor":             {"internal/apiclient"},
		"internal/controller":         {"internal/netmaker", "internal/store"},
	}
	got := strings.Join(violations(old, layers), "\n")
	for _, want := range []string{
		"internal/agent → internal/controller",
		"internal/agent → internal/store",
		"internal/agent → internal/topology",
		"internal/apiclient → internal/controller",
		"internal/dataplane/wg → internal/agent/plan",
		"internal/controller/ctltest → internal/server",
		"internal/dataplane/wgplan → sigs.k8s.io/knftables",
		"internal/doctor → internal/apiclient",
		"internal/controller → internal/netmaker",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the rules do not catch %s; they found:\n%s", want, got)
		}
	}
	clean := map[string][]string{"internal/agent": {"internal/apiclient", "internal/jointoken", "internal/api", "internal/dataplane/wg"}}
	if v := violations(clean, layers); len(v) != 0 {
		t.Errorf("a correct graph breaks the rules: %v", v)
	}
}
