package topology

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/policy"
	"github.com/statemesh/statemesh/internal/spec"
)

// benchPolicy: ten tiers selected by label across the whole fleet, one of
// them sensitive, a chain of rules between them and a clients segment.
func benchPolicy() string {
	var b strings.Builder
	b.WriteString("policy:\n  segments:\n")
	for i := range 10 {
		fmt.Fprintf(&b, "    - {name: t%d, match: {labels: {tier: t%d}}%s}\n", i, i, map[bool]string{true: ", sensitive: true"}[i == 9])
	}
	b.WriteString("    - {name: ops, clients: true}\n  rules:\n")
	for i := range 9 {
		fmt.Fprintf(&b, "    - {name: r%d, from: t%d, to: t%d, ports: [\"tcp/%d\", icmp]}\n", i, i, i+1, 8000+i)
	}
	b.WriteString("    - {name: ops-all, from: ops, to: t0, ports: [any]}\n")
	return b.String()
}

func designLimit(b *testing.B) (*plan.Plan, *policy.Policy) {
	data, err := os.ReadFile("../../examples/design-limit-ipv6.yaml")
	if err != nil {
		b.Fatal(err)
	}
	m, err := spec.Parse(append(data, benchPolicy()...))
	if err != nil {
		b.Fatal(err)
	}
	p, err := plan.Compute(m, nil)
	if err != nil {
		b.Fatal(err)
	}
	pol, err := policy.Compile(m.Policy)
	if err != nil {
		b.Fatal(err)
	}
	return p, pol
}

func benchNode(c *plan.Cluster, slot int) Node {
	n := Node{Name: fmt.Sprintf("%s-%s-n%04d", c.Region, c.Name, slot), Region: c.Region, Cluster: c.Name, Role: netmap.RoleNode,
		Class: []string{netmap.ClassStrong, netmap.ClassWeak}[slot%2], State: StateActive, Labels: map[string]string{"tier": fmt.Sprintf("t%d", slot%10)},
		Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(slot >> 8), byte(slot), 1}), 51820)}
	n.OverlayIPv4, n.OverlayIPv6, n.PodIPv4, n.PodIPv6 = c.NodeAddresses(slot)
	n.PublicKey[0], n.PublicKey[1] = byte(slot), byte(slot>>8)
	return n
}

// BenchmarkPolicyNodeFirewall5000 compiles one node's firewall (rules and
// the members of every set it uses) in a 5,000-node cluster.
func BenchmarkPolicyNodeFirewall5000(b *testing.B) {
	p, pol := designLimit(b)
	ix := New(p, Options{})
	ix.SetPlan(p, pol)
	c := &p.Regions[0].Clusters[0]
	for slot := range 5000 {
		if _, err := ix.Upsert(benchNode(c, slot)); err != nil {
			b.Fatal(err)
		}
	}
	n, _ := ix.Node(benchNode(c, 1).Name) // tier t1: members of t1, sources from t0
	b.ResetTimer()
	var fw *netmap.Firewall
	for b.Loop() {
		fw = ix.firewall(n)
	}
	members := 0
	for _, ps := range fw.Sets {
		members += len(ps)
	}
	b.ReportMetric(float64(len(fw.Rules)), "rules")
	b.ReportMetric(float64(members), "set-members")
}

// BenchmarkPolicyDesignLimitMesh compiles the policy for every node of the
// design-limit mesh (1,000,000 nodes): each node's segments, the sets its
// addresses join and its firewall's rules — what the controller does when
// a new policy is applied.
func BenchmarkPolicyDesignLimitMesh(b *testing.B) {
	p, pol := designLimit(b)
	var nodes []policy.Endpoint
	for ri := range p.Regions {
		for ci := range p.Regions[ri].Clusters {
			c := &p.Regions[ri].Clusters[ci]
			for slot := range 5000 {
				n := benchNode(c, slot)
				nodes = append(nodes, n.endpoint())
			}
		}
	}
	b.ResetTimer()
	for b.Loop() {
		sets := 0
		for _, e := range nodes {
			sets += len(pol.MemberSets(e))
			_ = pol.FirewallFor(e)
		}
		if sets == 0 {
			b.Fatal("no memberships")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(nodes)), "ns/node")
	b.ReportMetric(float64(len(nodes)), "nodes")
}
