package policy

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/spec"
)

const meshHead = `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: p}
regions:
  - name: eu
    clusters: [{name: a, maxNodes: 10}, {name: b, maxNodes: 10}]
  - name: us
    clusters: [{name: a, maxNodes: 10}]
`

const policyYAML = `policy:
  segments:
    - name: web
      match: {clusters: [eu/a, us/a]}
    - name: api
      match: {clusters: [eu/b]}
      isolated: true
    - name: vault
      match: {labels: {app: vault}}
      sensitive: true
    - name: ops
      clients: true
  rules:
    - {name: web-api, from: web, to: api, ports: ["tcp/7000", icmp]}
    - {name: api-vault, from: api, to: vault, ports: ["tcp/8200"]}
    - {name: web-vault, from: web, to: vault, ports: ["tcp/8200"]}
    - {name: ops-all, from: ops, to: web, ports: [any]}
`

func compile(t *testing.T, text string) *Policy {
	t.Helper()
	m, err := spec.Parse([]byte(meshHead + text))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(m.Policy)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	webStrong = Endpoint{Name: "w1", Region: "eu", Cluster: "a", Role: "node", Class: "strong"}
	webWeak   = Endpoint{Name: "w2", Region: "us", Cluster: "a", Role: "node", Class: "weak"}
	apiStrong = Endpoint{Name: "a1", Region: "eu", Cluster: "b", Role: "node", Class: "strong"}
	apiWeak   = Endpoint{Name: "a2", Region: "eu", Cluster: "b", Role: "node", Class: "weak"}
	vault     = Endpoint{Name: "v1", Region: "eu", Cluster: "b", Role: "node", Class: "strong", Labels: map[string]string{"app": "vault"}}
	vaultWeak = Endpoint{Name: "v2", Region: "eu", Cluster: "b", Role: "node", Class: "weak", Labels: map[string]string{"app": "vault"}}
	gateway   = Endpoint{Name: "g1", Region: "eu", Role: "gateway", Class: "strong"}
	client    = Endpoint{Name: "laptop", Region: "eu", Client: true, Segment: "ops"}
)

func TestAllowed(t *testing.T) {
	p := compile(t, policyYAML)
	for _, tc := range []struct {
		src, dst Endpoint
		proto    string
		port     int
		want     bool
	}{
		{webStrong, webWeak, TCP, 22, true},      // same segment
		{webStrong, apiStrong, TCP, 7000, true},  // rule
		{webStrong, apiStrong, ICMP, 0, true},    // rule
		{webStrong, apiStrong, TCP, 22, false},   // rule does not cover the port
		{apiStrong, webStrong, TCP, 7000, false}, // rules have a direction
		{apiStrong, apiWeak, TCP, 7000, false},   // isolated segment
		{apiStrong, vault, TCP, 8200, true},      // into sensitive, strong source
		{apiWeak, vault, TCP, 8200, false},       // weak never reaches sensitive
		{webWeak, vault, TCP, 8200, false},       // idem, whatever the rules say
		{webStrong, vault, TCP, 8200, true},      //
		{vault, vault, TCP, 1, true},             // members of a sensitive segment
		{webStrong, vaultWeak, TCP, 8200, false}, // weak node is not a member of vault
		{client, webWeak, TCP, 443, true},        // clients are a segment
		{client, apiStrong, TCP, 7000, false},    //
		{webStrong, gateway, ICMP, 0, false},     // gateways are in no segment
	} {
		got, why := p.Allowed(tc.src, tc.dst, tc.proto, tc.port)
		if got != tc.want {
			t.Errorf("%s → %s %s/%d: %v (%s), want %v", tc.src.Name, tc.dst.Name, tc.proto, tc.port, got, why, tc.want)
		}
	}
	if ok, _ := (*Policy)(nil).Allowed(webWeak, vault, TCP, 1); !ok {
		t.Error("no policy must allow everything")
	}
}

func TestFirewallAgreesWithAllowed(t *testing.T) {
	p := compile(t, policyYAML)
	eps := []Endpoint{webStrong, webWeak, apiStrong, apiWeak, vault, vaultWeak, gateway, client}
	members := map[string][]string{}
	for _, e := range eps {
		for _, s := range p.MemberSets(e) {
			members[s] = append(members[s], e.Name)
		}
	}
	for _, dst := range eps {
		fw := p.FirewallFor(dst)
		for _, src := range eps {
			for _, probe := range []struct {
				proto string
				port  int
			}{{TCP, 7000}, {TCP, 8200}, {ICMP, 0}, {TCP, 22}} {
				fwAllows := false
				for _, r := range fw.Rules {
					inSet := false
					for _, m := range members[r.Set] {
						inSet = inSet || m == src.Name
					}
					portOK := len(r.Ports) == 0
					for _, pt := range r.Ports {
						portOK = portOK || pt.Allows(probe.proto, probe.port)
					}
					fwAllows = fwAllows || (inSet && portOK)
				}
				want, why := p.Allowed(src, dst, probe.proto, probe.port)
				if src.Name == dst.Name {
					continue
				}
				if fwAllows != want {
					t.Errorf("%s → %s %s/%d: firewall %v, policy %v (%s)", src.Name, dst.Name, probe.proto, probe.port, fwAllows, want, why)
				}
			}
		}
	}
}

// TestOrderIndependence permutes segments and rules and compares the
// verdict matrix and every firewall.
func TestOrderIndependence(t *testing.T) {
	lines := strings.Split(strings.TrimSpace(policyYAML), "\n")
	var segs, rules [][]string
	var cur *[][]string
	for _, l := range lines[1:] {
		switch strings.TrimSpace(l) {
		case "segments:":
			cur = &segs
			continue
		case "rules:":
			cur = &rules
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(l), "- ") {
			*cur = append(*cur, []string{l})
		} else {
			(*cur)[len(*cur)-1] = append((*cur)[len(*cur)-1], l)
		}
	}
	render := func(segs, rules [][]string) string {
		var b strings.Builder
		b.WriteString("policy:\n  segments:\n")
		for _, s := range segs {
			b.WriteString(strings.Join(s, "\n") + "\n")
		}
		b.WriteString("  rules:\n")
		for _, r := range rules {
			b.WriteString(strings.Join(r, "\n") + "\n")
		}
		return b.String()
	}
	eps := []Endpoint{webStrong, webWeak, apiStrong, apiWeak, vault, vaultWeak, gateway, client}
	matrix := func(p *Policy) string {
		var b strings.Builder
		for _, s := range eps {
			for _, d := range eps {
				ok, _ := p.Allowed(s, d, TCP, 8200)
				ok2, _ := p.Allowed(s, d, TCP, 7000)
				fmt.Fprintf(&b, "%s>%s:%v,%v %v\n", s.Name, d.Name, ok, ok2, p.FirewallFor(d))
			}
		}
		return b.String()
	}
	want := matrix(compile(t, render(segs, rules)))
	r := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		r.Shuffle(len(segs), func(i, j int) { segs[i], segs[j] = segs[j], segs[i] })
		r.Shuffle(len(rules), func(i, j int) { rules[i], rules[j] = rules[j], rules[i] })
		if diff := cmp.Diff(want, matrix(compile(t, render(segs, rules)))); diff != "" {
			t.Fatalf("order changed the result:\n%s", diff)
		}
	}
}

func TestPolicyValidation(t *testing.T) {
	bad := `policy:
  segments:
    - name: web
      match: {clusters: [eu/zz], roles: [robot]}
    - name: web
    - name: vault
      sensitive: true
      clients: true
      match: {classes: [weak]}
    - name: weakies
      match: {classes: [weak]}
  rules:
    - {name: r1, from: web, to: nowhere, ports: ["tcp/0"]}
    - {name: r1, from: weakies, to: vault, ports: []}
    - {name: r3, from: web, to: web, ports: [icmp, "sctp/1"]}
    - {name: r4, from: web, to: web, ports: [icmp]}
`
	_, err := spec.Parse([]byte(meshHead + bad))
	var es spec.Errors
	if err == nil {
		t.Fatal("bad policy accepted")
	}
	es, _ = err.(spec.Errors)
	var got []string
	for _, e := range es {
		got = append(got, e.Path)
	}
	want := []string{
		"policy.segments[0].match.clusters[0]", "policy.segments[0].match.roles[0]", "policy.segments[1].name",
		"policy.segments[2].match.classes[0]", "policy.segments[2].clients",
		"policy.rules[0].to", "policy.rules[0].ports[0]",
		"policy.rules[1].name", "policy.rules[1]", "policy.rules[1].ports",
		"policy.rules[2].ports[1]", "policy.rules[3]",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s\n%v", diff, err)
	}
}

// FuzzCompile: any policy the spec parser accepts compiles or is refused
// with an error, and a compiled policy answers questions without
// panicking.
func FuzzCompile(f *testing.F) {
	f.Add("segments:\n  - {name: a}\n  - {name: b, isolated: true}\nrules:\n  - {name: r, from: a, to: b, ports: [tcp/80]}\n")
	f.Add("segments: [{name: c, clients: true, match: {classes: [strong]}}]\n")
	f.Fuzz(func(t *testing.T, doc string) {
		var p spec.Policy
		if yaml.Unmarshal([]byte(doc), &p) != nil {
			return
		}
		c, err := Compile(&p)
		if err != nil || c == nil {
			return
		}
		e := Endpoint{Name: "n", Region: "r", Cluster: "c", Role: "node", Class: "strong"}
		c.SegmentsOf(e)
		c.FirewallFor(e)
		c.Allowed(e, e, "tcp", 80)
		c.Matrix()
	})
}
