package netmaker_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/spec"
)

func mapYAML(t *testing.T, src string) (netmaker.PolicyMap, error) {
	t.Helper()
	var pol spec.Policy
	if err := yaml.Unmarshal([]byte(src), &pol); err != nil {
		t.Fatal(err)
	}
	return netmaker.Map(&pol, clusters)
}

// render is one line per ACL policy: network name proto ports src→dst dir.
func render(acls []netmaker.ACL) []string {
	var out []string
	for _, a := range acls {
		dir := "->"
		if a.Direction == netmaker.BothWays {
			dir = "<->"
		}
		out = append(out, fmt.Sprintf("%s %s %s/%s[%s] %s%s%s", a.NetworkID, a.Name, a.Protocol, a.ServiceType, strings.Join(a.Ports, ","), a.Src[0].Value, dir, a.Dst[0].Value))
	}
	return out
}

func TestMapPolicy(t *testing.T) {
	for _, tc := range []struct {
		name, policy string
		acls         []string
		tags         map[string][]string
	}{
		{"rules per protocol, within regions", policyYAML, []string{
			"nm-eu statemesh-seg-db all/Any[] nm-eu.sm-seg-db<->nm-eu.sm-seg-db",
			"nm-eu statemesh-seg-web all/Any[] nm-eu.sm-seg-web<->nm-eu.sm-seg-web",
			"nm-eu statemesh-web-db-icmp icmp/ICMP[] nm-eu.sm-seg-web->nm-eu.sm-seg-db",
			"nm-eu statemesh-web-db-tcp tcp/Custom[5432,6000-6010] nm-eu.sm-seg-web->nm-eu.sm-seg-db",
			"nm-us statemesh-seg-web all/Any[] nm-us.sm-seg-web<->nm-us.sm-seg-web",
		}, map[string][]string{"eu/prod": {"sm-seg-web"}, "eu/data": {"sm-seg-db"}, "us/prod": {"sm-seg-web"}}},
		{"any covers the other ports; isolated has no inner policy", `
segments:
  - {name: a, match: {regions: [us]}, isolated: true}
rules:
  - {name: r, from: a, to: a, ports: ["udp/53", any]}
`, []string{"nm-us statemesh-r-all all/Any[] nm-us.sm-seg-a->nm-us.sm-seg-a"}, map[string][]string{"us/prod": {"sm-seg-a"}}},
		{"segments without Netmaker members", `
segments:
  - {name: gws, match: {roles: [gateway]}}
  - {name: weak, match: {classes: [weak]}}
  - {name: ops, match: {roles: [operator], labels: {team: ops}}}
  - {name: nodes, match: {roles: [node], classes: [strong], regions: [us]}}
rules:
  - {name: r, from: gws, to: nodes, ports: [tcp/22]}
`, []string{"nm-us statemesh-seg-nodes all/Any[] nm-us.sm-seg-nodes<->nm-us.sm-seg-nodes"}, map[string][]string{"us/prod": {"sm-seg-nodes"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := mapYAML(t, tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.acls, render(m.ACLs)); diff != "" {
				t.Errorf("ACL policies (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.tags, m.Tags); diff != "" {
				t.Errorf("tags (-want +got):\n%s", diff)
			}
		})
	}
	m, err := netmaker.Map(nil, clusters)
	if err != nil || !cmp.Equal(render(m.ACLs), []string{"nm-eu statemesh-allow-all all/Any[] *<->*", "nm-us statemesh-allow-all all/Any[] *<->*"}) {
		t.Errorf("no policy: %v %v", render(m.ACLs), err)
	}
	m, _ = mapYAML(t, policyYAML+"  - {name: us-db, from: web, to: db, ports: [tcp/1]}\n")
	if len(m.Notes) != 2 || !strings.Contains(m.Notes[0], "allowed traffic between hosts of different regions") {
		t.Errorf("the cross-region approximation is not noted: %v", m.Notes)
	}
}

func TestMapPolicyRefusesWhatNetmakerCannotExpress(t *testing.T) {
	m, err := mapYAML(t, `
segments:
  - {name: lab, match: {labels: {app: x}}}
  - {name: laptops, clients: true}
  - {name: mixed, clients: true, match: {clusters: [eu/prod]}}
  - {name: web, match: {clusters: [eu/prod]}}
  - {name: gw-labelled, match: {roles: [gateway], labels: {edge: "yes"}}}
rules:
  - {name: laptops-web, from: laptops, to: web, ports: [tcp/443]}
  - {name: web-self, from: web, to: web, ports: [tcp/80]}
`)
	var re *netmaker.RefusedError
	if !errors.As(err, &re) || !errors.Is(err, netmaker.ErrRefused) {
		t.Fatalf("want a RefusedError, got %v", err)
	}
	want := []string{
		"policy.segments[0] (lab).match.labels: segment matching labels (Netmaker knows no StateMesh node labels)",
		"policy.segments[2] (mixed).clients: clients segment with Netmaker hosts, or a rule between one and them",
		"policy.rules[0] (laptops-web): clients segment with Netmaker hosts, or a rule between one and them",
	}
	if len(re.Items) != len(want) {
		t.Fatalf("refused %d constructs, want %d: %v", len(re.Items), len(want), re.Items)
	}
	for i, w := range want {
		if !strings.HasPrefix(re.Items[i], w) {
			t.Errorf("refusal %d: %q, want it to start %q", i, re.Items[i], w)
		}
	}
	// The rest is mapped (for a caller that reports the error and keeps
	// the previous ACL policies with SkipPolicy), nothing refused dropped
	// into it.
	if got := render(m.ACLs); !cmp.Equal(got, []string{"nm-eu statemesh-seg-web all/Any[] nm-eu.sm-seg-web<->nm-eu.sm-seg-web", "nm-eu statemesh-web-self-tcp tcp/Custom[80] nm-eu.sm-seg-web->nm-eu.sm-seg-web"}) {
		t.Errorf("the expressible rest: %v", got)
	}
}

// The mapping table is Go data the code uses, and docs/netmaker.md
// carries it verbatim.
func TestDocsCarryTheMappingTable(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "netmaker.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), netmaker.MappingMarkdown()) {
		t.Errorf("docs/netmaker.md does not carry the mapping table; it should contain:\n%s", netmaker.MappingMarkdown())
	}
	kinds := map[string]int{}
	for _, m := range netmaker.Mappings {
		kinds[m.Kind]++
	}
	if kinds[netmaker.Exact] == 0 || kinds[netmaker.Approximate] == 0 || kinds[netmaker.Refused] == 0 {
		t.Errorf("the table lacks a kind: %v", kinds)
	}
}

// Netmaker wants key names of 3 to 32 characters, unique across keys.
func TestKeyNamesFitNetmaker(t *testing.T) {
	long := netmaker.KeyName("a-rather-long-region-name", "and-a-long-cluster-name", 9999)
	if len(long) > 32 || !strings.HasPrefix(long, netmaker.KeyPrefix) || !strings.HasSuffix(long, "#9999") {
		t.Errorf("%q (%d characters)", long, len(long))
	}
	if other := netmaker.KeyName("a-rather-long-region-name", "and-a-long-cluster-other", 9999); other == long {
		t.Errorf("two clusters share the key name %q", long)
	}
	if got := netmaker.KeyName("eu", "prod", 3); got != "sm:eu/prod#3" {
		t.Errorf("short name %q", got)
	}
}
