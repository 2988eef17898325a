package deploy

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/cli"
)

// chartCase is one set of chart values (helm --set arguments).
type chartCase struct {
	name string
	set  []string
}

// chartCases vary every value of deploy/helm/statemesh/values.yaml that
// reaches a container's arguments over each choice it documents, from a
// base with every optional feature on, plus the full product of the values
// that change the agent's command line the most (labels × gateways ×
// store).
func chartCases() []chartCase {
	base := []string{
		"agent.controller=https://statemesh.example.com:7443",
		"controller.advertise=https://statemesh.example.com:7443",
		"controller.tlsSANs={statemesh.example.com,192.0.2.1}",
		"controller.kekSecret=statemesh-kek",
		"controller.spec=apiVersion: statemesh.dev/v1alpha1",
		"agent.underlayAllow={tcp/22,udp/4789,tcp/30000-32767}",
		"agent.controllerAttestation.configMap=mesh-spec",
	}
	var cases []chartCase
	add := func(name string, set ...string) {
		cases = append(cases, chartCase{name, append(append([]string{}, base...), set...)})
	}
	add("defaults+features")
	for _, role := range []string{"node", "operator"} {
		add("role="+role, "agent.role="+role)
	}
	for _, tpm := range []string{"", "/dev/tpmrm0", "/dev/tpm0"} {
		add("tpm="+tpm, "agent.tpm="+tpm)
	}
	for _, wg := range []string{"auto", "kernel", "userspace"} {
		add("wireguard="+wg, "agent.wireguard="+wg)
	}
	for _, fw := range []string{"true", "false"} {
		add("firewall="+fw, "agent.firewall="+fw)
	}
	add("no-attestation", "agent.controllerAttestation.configMap=")
	add("attestation-interval", "agent.controllerAttestation.interval=5m")
	add("metrics-ports", "agent.metricsPort=19465", "controller.metricsPort=19464")
	add("gateway-timeout", "controller.gatewayTimeout=10s")
	add("data-dir", "agent.dataDir=/var/lib/sm")
	add("gateway-without-public-endpoint", "gateway.enabled=true", "gateway.publicEndpointFromNodeIP=false")
	labels := map[string][]string{
		"0": nil,
		"1": {"agent.labels.app=web"},
		"2": {"agent.labels.app=web", "agent.labels.tier=frontend"},
		"3": {"agent.labels.app=web", "agent.labels.tier=frontend", "agent.labels.statemesh\\.dev/zone=eu-1a"},
	}
	for _, n := range []string{"0", "1", "2", "3"} {
		for _, gw := range []string{"false", "true"} {
			for _, store := range [][]string{
				{"controller.store=bolt"},
				{"controller.store=etcd", "controller.replicas=3", "controller.etcdEndpoints={http://etcd-0:2379,https://etcd-1:2379}"},
			} {
				set := append(append([]string{"gateway.enabled=" + gw}, labels[n]...), store...)
				add(fmt.Sprintf("labels=%s,gateway=%s,%s", n, gw, store[0]), set...)
			}
		}
	}
	return cases
}

// kubeVar is a reference the kubelet substitutes for $(VAR) in a container's
// arguments (the chart's env: the node name and the host IP).
var kubeVar = regexp.MustCompile(`\$\(([A-Z_]+)\)`)

func expand(args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = kubeVar.ReplaceAllStringFunc(a, func(m string) string {
			if v, ok := env[kubeVar.FindStringSubmatch(m)[1]]; ok {
				return v
			}
			return m // the kubelet leaves unknown references as they are
		})
	}
	return out
}

// TestHelmChartArgsParse (issue 18 item 4): the project's chart rendered
// with helm template for every documented choice; every container's
// arguments, with the kubelet's substitutions on an IPv4 and an IPv6 host,
// are accepted by the real statemesh command-line parser and the command's
// flag checks. Before the fix, --labels ended in a comma (app=web, — a
// label value the agent refuses; two labels did not parse) and the
// gateway's --public-endpoint=$(STATEMESH_HOST_IP):51820 was not an
// endpoint on an IPv6 host.
func TestHelmChartArgsParse(t *testing.T) {
	hosts := map[string]string{"ipv4": "192.0.2.10", "ipv6": "2001:db8::10"}
	for _, tc := range chartCases() {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			for _, s := range tc.set {
				args = append(args, "--set-string", s)
			}
			// Lists and booleans need --set, not --set-string.
			for i := range args {
				if i%2 == 1 && (strings.Contains(args[i], "={") || strings.HasSuffix(args[i], "=true") || strings.HasSuffix(args[i], "=false") || strings.Contains(args[i], "replicas=") || strings.Contains(args[i], "Port=")) {
					args[i-1] = "--set"
				}
			}
			docs, out, err := helmTemplate(t, args...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, out)
			}
			n := 0
			for _, d := range docs {
				kind, _ := d["kind"].(string)
				if kind != "DaemonSet" && kind != "StatefulSet" {
					continue
				}
				for _, c := range dig(d, "spec", "template", "spec", "containers").([]any) {
					raw := toStrings(dig(c, "args"))
					for fam, ip := range hosts {
						argv := expand(raw, map[string]string{"STATEMESH_NODE_NAME": "eu-prod-n1", "STATEMESH_HOST_IP": ip})
						n++
						if err := cli.CheckArgs(argv); err != nil {
							t.Errorf("%s %s on an %s host: statemesh %s: %v", kind, dig(d, "metadata", "name"), fam, strings.Join(argv, " "), err)
						}
					}
				}
			}
			if n == 0 {
				t.Fatalf("no containers rendered:\n%s", out)
			}
		})
	}
}

// TestChartLabelsAndPublicEndpoint pins the chart's side of issue 18
// item 4: one --labels flag per label (the agent merges them;
// internal/cli's TestAgentFlagsLabelsAndEndpoint checks the merge) and
// the host IP alone as the public endpoint (the agent adds the port and
// brackets IPv6).
func TestChartLabelsAndPublicEndpoint(t *testing.T) {
	docs, out, err := helmTemplate(t, "--set", "agent.controller=https://c:7443", "--set", "gateway.enabled=true",
		"--set", "agent.labels.app=web", "--set", "agent.labels.tier=frontend")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	args := toStrings(dig(find(docs, "DaemonSet", "sm-gateway"), "spec", "template", "spec", "containers", 0, "args"))
	var labels []string
	endpoint := ""
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--labels="); ok {
			labels = append(labels, v)
		}
		if v, ok := strings.CutPrefix(a, "--public-endpoint="); ok {
			endpoint = v
		}
	}
	if strings.Join(labels, " ") != "app=web tier=frontend" {
		t.Errorf("--labels flags %q, want app=web and tier=frontend", labels)
	}
	if endpoint != "$(STATEMESH_HOST_IP)" {
		t.Errorf("--public-endpoint=%s, want the host IP alone", endpoint)
	}
}
