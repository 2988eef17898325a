package plan

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/statemesh/statemesh/internal/golden"
	"github.com/statemesh/statemesh/internal/spec"
)

func load(t testing.TB, path string) *spec.Mesh {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := spec.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestGoldenExamples(t *testing.T) {
	for _, name := range []string{"small", "design-limit-ipv6"} {
		t.Run(name, func(t *testing.T) {
			p, err := Compute(load(t, "../../examples/"+name+".yaml"), nil)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, name+".plan.json", mustJSON(t, p))
			checkInvariants(t, load(t, "../../examples/"+name+".yaml"), p)
		})
	}
}

func TestDesignLimitIPv4IsInfeasibleWithNumbers(t *testing.T) {
	_, err := Compute(load(t, "../../examples/design-limit-ipv4.yaml"), nil)
	var inf *InfeasibleError
	if !errors.As(err, &inf) {
		t.Fatalf("want InfeasibleError, got %v", err)
	}
	golden.Check(t, "design-limit-ipv4.error.txt", []byte(err.Error()+"\n"))
	p := inf.Problems[0]
	for _, want := range []string{"209,715,200", "17,891,328", "17 of 200", "IPv6", "maxPodsPerNode"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("explanation lacks %q", want)
		}
	}
	if p.Needed != "209,715,200 addresses" {
		t.Errorf("needed = %q", p.Needed)
	}
}

func TestDesignLimitIPv6Numbers(t *testing.T) {
	p, err := Compute(load(t, "../../examples/design-limit-ipv6.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	clusters, ids := 0, map[int]bool{}
	for _, r := range p.Regions {
		for _, c := range r.Clusters {
			clusters++
			ids[c.ClusterID] = true
			if c.PodIPv6.Bits() != 108 || c.NodeMaskIPv6 != 121 || c.OverlayIPv4.Bits() != 19 || c.PodMTU != 1440 {
				t.Fatalf("%s/%s: pod %s mask /%d overlay %s mtu %d", r.Name, c.Name, c.PodIPv6, c.NodeMaskIPv6, c.OverlayIPv4, c.PodMTU)
			}
		}
	}
	if clusters != 200 || len(ids) != 200 {
		t.Errorf("clusters %d, unique IDs %d", clusters, len(ids))
	}
}

// checkInvariants asserts what must hold of every plan: no two allocated
// ranges overlap, every range fits its cluster's limits, IDs are unique.
func checkInvariants(t testing.TB, m *spec.Mesh, p *Plan) {
	t.Helper()
	type rng struct {
		name string
		p    netip.Prefix
	}
	var overlay, pods []rng
	ids := map[int]string{}
	for ri, r := range p.Regions {
		if !contains(p.Addressing.OverlayIPv4, r.OverlayIPv4) {
			t.Errorf("region %s overlay %s outside %s", r.Name, r.OverlayIPv4, p.Addressing.OverlayIPv4)
		}
		overlay = append(overlay, rng{"region " + r.Name, r.OverlayIPv4})
		for _, g := range r.Gateways {
			if !r.InfraIPv4.Contains(g.OverlayIPv4) || r.ClientsIPv4.Contains(g.OverlayIPv4) {
				t.Errorf("gateway %s of %s outside infra block or inside clients", g.OverlayIPv4, r.Name)
			}
		}
		if len(r.Gateways) != m.Regions[ri].Gateways {
			t.Errorf("region %s: %d gateways planned, spec says %d", r.Name, len(r.Gateways), m.Regions[ri].Gateways)
		}
		for _, c := range r.Clusters {
			if !contains(r.OverlayIPv4, c.OverlayIPv4) || c.OverlayIPv4.Overlaps(r.InfraIPv4) {
				t.Errorf("cluster %s/%s overlay %s not in region %s or overlaps infra", r.Name, c.Name, c.OverlayIPv4, r.OverlayIPv4)
			}
			overlay = append(overlay, rng{"cluster " + r.Name + "/" + c.Name, c.OverlayIPv4})
			if cap := 1<<hostBits(c.OverlayIPv4) - 2; cap < c.MaxNodes {
				t.Errorf("cluster %s/%s: overlay %s holds %d < %d nodes", r.Name, c.Name, c.OverlayIPv4, cap, c.MaxNodes)
			}
			need := spec.ClusterPodBits(c.MaxNodes, c.MaxPodsPerNode)
			for _, pp := range []netip.Prefix{c.PodIPv4, c.PodIPv6} {
				if !pp.IsValid() {
					continue
				}
				pods = append(pods, rng{"pods " + r.Name + "/" + c.Name, pp})
				if hostBits(pp) < need {
					t.Errorf("cluster %s/%s: pod CIDR %s smaller than 2^%d", r.Name, c.Name, pp, need)
				}
			}
			if !c.PodIPv4.IsValid() && !c.PodIPv6.IsValid() {
				t.Errorf("cluster %s/%s has no pod CIDR", r.Name, c.Name)
			}
			if c.ClusterID < 1 || c.ClusterID > m.Cilium.MaxConnectedClusters {
				t.Errorf("cluster %s/%s: ID %d out of range", r.Name, c.Name, c.ClusterID)
			}
			if o, dup := ids[c.ClusterID]; dup {
				t.Errorf("cluster ID %d used by %s and %s/%s", c.ClusterID, o, r.Name, c.Name)
			}
			ids[c.ClusterID] = r.Name + "/" + c.Name
		}
	}
	all := append(pods, overlay...)
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			a, b := all[i], all[j]
			nested := strings.HasPrefix(a.name, "region ") && strings.HasPrefix(b.name, "cluster ") && contains(a.p, b.p)
			if a.p.Overlaps(b.p) && !nested {
				t.Errorf("%s %s overlaps %s %s", a.name, a.p, b.name, b.p)
			}
		}
	}
}

// randomSpec builds a random valid-looking mesh.
func randomSpec(r *rand.Rand) string {
	var b strings.Builder
	b.WriteString("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: rnd}\naddressing:\n")
	fams := r.IntN(3)
	if fams != 1 {
		b.WriteString("  podIPv4: [10.0.0.0/8, 172.16.0.0/12]\n")
	}
	if fams != 0 {
		b.WriteString("  podIPv6: [fd00:10::/48]\n  overlayIPv6: fd7a::/48\n")
	}
	b.WriteString("regions:\n")
	explicit := 0
	for ri := range 1 + r.IntN(6) {
		fmt.Fprintf(&b, "  - name: r%d\n    gateways: %d\n    clusters:\n", ri, 2+r.IntN(3))
		for ci := range 1 + r.IntN(5) {
			nodes := 1 + r.IntN(800)
			ppn := 1 + r.IntN(250)
			fmt.Fprintf(&b, "      - name: c%d\n        maxNodes: %d\n        maxPodsPerNode: %d\n        maxPods: %d\n", ci, nodes, ppn, 1+r.IntN(min(150000, nodes*ppn)))
			if fams != 1 && r.IntN(5) == 0 {
				// An explicit, suitably sized pod CIDR in 192.168/16 slices.
				if spec.ClusterPodBits(nodes, ppn) <= 8 {
					fmt.Fprintf(&b, "        podCIDRs: [172.31.%d.0/24]\n", explicit)
					explicit++
				}
			}
		}
	}
	return b.String()
}

func TestPropertyRandomMeshes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	planned := 0
	for i := range 300 {
		src := randomSpec(r)
		m, err := spec.Parse([]byte(src))
		if err != nil {
			t.Fatalf("case %d: generated spec invalid: %v\n%s", i, err, src)
		}
		p, err := Compute(m, nil)
		if err != nil {
			var inf *InfeasibleError
			if !errors.As(err, &inf) {
				t.Fatalf("case %d: non-infeasible error %v", i, err)
			}
			continue
		}
		planned++
		checkInvariants(t, m, p)
		if t.Failed() {
			t.Fatalf("case %d spec:\n%s", i, src)
		}
	}
	if planned < 200 {
		t.Fatalf("only %d of 300 random meshes planned: the generator is too harsh to test anything", planned)
	}
}

func TestDeterministic(t *testing.T) {
	m := load(t, "../../examples/small.yaml")
	a, _ := Compute(m, nil)
	b, _ := Compute(load(t, "../../examples/small.yaml"), nil)
	if diff := cmp.Diff(mustJSON(t, a), mustJSON(t, b)); diff != "" {
		t.Error(diff)
	}
}

// allocations extracts every allocation of a plan, keyed by owner.
func allocations(p *Plan) map[string]string {
	out := map[string]string{}
	for _, r := range p.Regions {
		out["region "+r.Name] = r.OverlayIPv4.String()
		for _, c := range r.Clusters {
			k := "cluster " + r.Name + "/" + c.Name
			out[k+" overlay"] = c.OverlayIPv4.String()
			out[k+" pods4"] = c.PodIPv4.String()
			out[k+" pods6"] = c.PodIPv6.String()
			out[k+" id"] = fmt.Sprint(c.ClusterID)
		}
	}
	return out
}

func planYAML(t *testing.T, src string, prev *Plan) *Plan {
	t.Helper()
	m, err := spec.Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compute(m, prev)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, m, p)
	return p
}

const stabilityBase = `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: s}
addressing: {podIPv4: [10.0.0.0/8], podIPv6: [fd00::/48]}
regions:
  - name: a
    clusters:
      - {name: one, maxNodes: 100}
      - {name: two, maxNodes: 2000}
  - name: b
    clusters:
      - {name: one, maxNodes: 500}
`

func TestStabilityAddingNeverMoves(t *testing.T) {
	base := planYAML(t, stabilityBase, nil)
	// New region inserted first and a new cluster inserted first: without
	// the previous plan these would shift everything.
	grown := strings.Replace(stabilityBase, "regions:\n", "regions:\n  - name: new\n    clusters:\n      - {name: x, maxNodes: 3000}\n", 1)
	grown = strings.Replace(grown, "    clusters:\n      - {name: one, maxNodes: 100}", "    clusters:\n      - {name: zero, maxNodes: 4000}\n      - {name: one, maxNodes: 100}", 1)
	after := planYAML(t, grown, base)
	before := allocations(base)
	now := allocations(after)
	for k, v := range before {
		if now[k] != v {
			t.Errorf("%s moved: %s -> %s", k, v, now[k])
		}
	}
	if len(now) != len(before)+1+2*4 {
		t.Errorf("expected one new region and two new clusters, got %d allocations (was %d)", len(now), len(before))
	}
	// Without the previous plan the same growth moves things: the test
	// above would be meaningless otherwise.
	fresh := allocations(planYAML(t, grown, nil))
	moved := 0
	for k, v := range before {
		if fresh[k] != v {
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("growth without --state moved nothing; the stability test proves nothing")
	}
}

func TestStabilityRemovingFreesOnlyItsOwn(t *testing.T) {
	base := planYAML(t, stabilityBase, nil)
	shrunk := strings.Replace(stabilityBase, "      - {name: one, maxNodes: 100}\n", "", 1)
	after := planYAML(t, shrunk, base)
	before, now := allocations(base), allocations(after)
	for k, v := range now {
		if before[k] != v {
			t.Errorf("%s moved: %s -> %s", k, before[k], v)
		}
	}
	if _, ok := now["cluster a/one overlay"]; ok {
		t.Error("removed cluster still allocated")
	}
	// The freed ranges are reused by a new cluster of the same size.
	readd := strings.Replace(shrunk, "      - {name: two, maxNodes: 2000}\n", "      - {name: two, maxNodes: 2000}\n      - {name: three, maxNodes: 100}\n", 1)
	again := allocations(planYAML(t, readd, after))
	if again["cluster a/three overlay"] != before["cluster a/one overlay"] || again["cluster a/three pods4"] != before["cluster a/one pods4"] {
		t.Errorf("freed ranges not reused: three got %s %s, one had %s %s", again["cluster a/three overlay"], again["cluster a/three pods4"], before["cluster a/one overlay"], before["cluster a/one pods4"])
	}
}

func TestStateRoundTripsThroughJSON(t *testing.T) {
	p := planYAML(t, stabilityBase, nil)
	back, err := Decode(mustJSON(t, p))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(mustJSON(t, p), mustJSON(t, back)); diff != "" {
		t.Error(diff)
	}
	if _, err := Decode([]byte(`{"regions": [], "bogus": 1}`)); err == nil {
		t.Error("Decode accepted a file that is not a plan")
	}
}

func TestMTUPathRule(t *testing.T) {
	src := `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: m}
underlay: {wan: {mtu: 1400}}
roles: {operator: {underlayMTU: 1380}}
regions:
  - name: a
    underlayMTU: 9001
    clusters: [{name: c, maxNodes: 10}]
  - name: b
    underlayFamily: ipv6
    clusters: [{name: c, maxNodes: 10}]
`
	p := planYAML(t, src, nil)
	type line struct {
		Region, Role string
		MTU          int
		By           string
	}
	var got []line
	for _, r := range p.Regions {
		for _, m := range r.MTU {
			got = append(got, line{r.Name, m.Role, m.WireGuardMTU, m.LimitedBy})
		}
	}
	want := []line{
		{"a", "gateway", 1340, "WAN between regions (1400, ipv4)"},
		{"a", "node", 1340, "WAN between regions (1400, ipv4)"},
		{"a", "operator", 1320, "own underlay"},
		{"b", "gateway", 1340, "WAN between regions (1400, ipv4)"},
		{"b", "node", 1340, "WAN between regions (1400, ipv4)"},
		{"b", "operator", 1300, "own underlay"}, // 1380 over the region's IPv6 underlay
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	c, _ := p.Cluster("a", "c")
	if c.PodMTU != 1340 || c.OperatorPodMTU != 1320 {
		t.Errorf("pod MTU %d operator %d", c.PodMTU, c.OperatorPodMTU)
	}
}

func TestPodMTUBelowIPv6MinimumIsInfeasible(t *testing.T) {
	src := `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: m}
addressing: {podIPv6: [fd00::/48]}
underlay: {mtu: 1380}
cilium: {routingMode: vxlan}
regions:
  - name: a
    clusters: [{name: c, maxNodes: 10}]
`
	m, err := spec.Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compute(m, nil)
	if err == nil || !strings.Contains(err.Error(), "ipv6 pods need an MTU of at least 1280; the overlay leaves 1270") {
		t.Fatalf("got %v", err)
	}
}

func TestAllocAligned(t *testing.T) {
	p := netip.MustParsePrefix
	used := []netip.Prefix{p("10.0.0.0/16"), p("10.2.0.0/15")}
	got, ok := allocAligned([]netip.Prefix{p("10.0.0.0/8")}, 15, used)
	if !ok || got != p("10.4.0.0/15") {
		t.Errorf("got %v %v", got, ok)
	}
	got, ok = allocAligned([]netip.Prefix{p("10.0.0.0/8")}, 16, used)
	if !ok || got != p("10.1.0.0/16") {
		t.Errorf("got %v %v", got, ok)
	}
	if _, ok := allocAligned([]netip.Prefix{p("10.0.0.0/15")}, 15, []netip.Prefix{p("10.1.0.0/24")}); ok {
		t.Error("allocated in a full supernet")
	}
	got, ok = allocAligned([]netip.Prefix{p("fd00::/48")}, 108, []netip.Prefix{p("fd00::/108")})
	if !ok || got != p("fd00::10:0/108") {
		t.Errorf("v6 got %v %v", got, ok)
	}
	if l := lastAddr(p("255.255.255.0/24")); l != netip.MustParseAddr("255.255.255.255") {
		t.Errorf("lastAddr %v", l)
	}
	if _, ok := allocAligned([]netip.Prefix{p("255.255.255.0/24")}, 25, []netip.Prefix{p("255.255.255.0/25"), p("255.255.255.128/25")}); ok {
		t.Error("allocated past the end of the address space")
	}
}

func FuzzPlan(f *testing.F) {
	data, err := os.ReadFile("../../examples/small.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(stabilityBase))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := spec.Parse(data)
		if err != nil {
			return
		}
		p, err := Compute(m, nil)
		if err == nil {
			checkInvariants(t, m, p)
		}
	})
}

func BenchmarkPlanDesignLimit(b *testing.B) {
	m := load(b, "../../examples/design-limit-ipv6.yaml")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compute(m, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanDesignLimitWithState(b *testing.B) {
	m := load(b, "../../examples/design-limit-ipv6.yaml")
	prev, err := Compute(m, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compute(m, prev); err != nil {
			b.Fatal(err)
		}
	}
}

// TestIssue18AdviceNamesOnlyChanges: the ways out of a too-small pod MTU
// name only settings that are not already so (native routing was advised
// to a native mesh, disabling cilium.wireguard to one without it).
func TestIssue18AdviceNamesOnlyChanges(t *testing.T) {
	for _, tc := range []struct {
		cilium  string
		advised []string
		not     []string
	}{
		{"{routingMode: native}", []string{"raise the smallest underlay MTU"}, []string{"routingMode: native", "cilium.wireguard"}},
		{"{routingMode: vxlan}", []string{"routingMode: native", "raise"}, []string{"cilium.wireguard"}},
		{"{routingMode: native, wireguard: true}", []string{"disable cilium.wireguard", "raise"}, []string{"routingMode: native"}},
	} {
		src := "apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\naddressing: {podIPv6: [fd00::/48]}\nunderlay: {mtu: 1300}\ncilium: " + tc.cilium +
			"\nregions:\n  - name: a\n    clusters: [{name: c, maxNodes: 10}]\n"
		m, err := spec.Parse([]byte(src))
		if err != nil {
			t.Fatal(err)
		}
		_, err = Compute(m, nil)
		var inf *InfeasibleError
		if !errors.As(err, &inf) {
			t.Fatalf("%s: got %v, want infeasible", tc.cilium, err)
		}
		ways := strings.Join(inf.Problems[0].WaysOut, "\n")
		for _, w := range tc.advised {
			if !strings.Contains(ways, w) {
				t.Errorf("%s: ways out lack %q:\n%s", tc.cilium, w, ways)
			}
		}
		for _, w := range tc.not {
			if strings.Contains(ways, w) {
				t.Errorf("%s: ways out name %q, which is already so:\n%s", tc.cilium, w, ways)
			}
		}
	}
}

// TestIssue18DualStackAdviceNotAlreadySo: an already dual-stack mesh whose
// IPv4 pod space is short is not told to add IPv6 pod addresses.
func TestIssue18DualStackAdviceNotAlreadySo(t *testing.T) {
	m, err := spec.Parse([]byte("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\naddressing: {podIPv4: [10.0.0.0/20], podIPv6: [fd00:10::/48]}\n" +
		"regions:\n  - name: a\n    clusters: [{name: c, maxNodes: 5000}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compute(m, nil)
	var inf *InfeasibleError
	if !errors.As(err, &inf) {
		t.Fatalf("got %v, want infeasible", err)
	}
	ways := strings.Join(inf.Problems[0].WaysOut, "\n")
	if strings.Contains(ways, "replace addressing.podIPv4 with addressing.podIPv6") || !strings.Contains(ways, "remove addressing.podIPv4") {
		t.Errorf("ways out:\n%s", ways)
	}
}
