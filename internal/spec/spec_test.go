package spec

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const good = `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata:
  name: t
addressing:
  podIPv4: [10.0.0.0/8]
regions:
  - name: eu-central
    clusters:
      - name: prod
        maxNodes: 100
`

func paths(err error) []string {
	var es Errors
	if !errors.As(err, &es) {
		return []string{"not spec.Errors: " + err.Error()}
	}
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Path
	}
	return out
}

func TestParseGoodAppliesDefaults(t *testing.T) {
	m, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	r := m.Regions[0]
	c := r.Clusters[0]
	got := []any{m.Addressing.OverlayIPv4, r.Gateways, r.UnderlayMTU, r.UnderlayFamily, c.MaxPodsPerNode, c.MaxPods, m.Cilium.RoutingMode, m.Cilium.MaxConnectedClusters, m.Underlay.WAN.MTU}
	want := []any{"100.64.0.0/10", 2, 1500, "ipv4", 110, 11000, "native", 255, 1500}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

func TestParseDefaultPodSupernetOnlyWhenNoneGiven(t *testing.T) {
	m, err := Parse([]byte(strings.Replace(good, "  podIPv4: [10.0.0.0/8]\n", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"10.0.0.0/8"}, m.Addressing.PodIPv4); diff != "" {
		t.Error(diff)
	}
	m, err = Parse([]byte(strings.Replace(good, "podIPv4: [10.0.0.0/8]", "podIPv6: [fd00::/48]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Addressing.PodIPv4) != 0 {
		t.Errorf("IPv6-only spec got IPv4 pod supernet %v", m.Addressing.PodIPv4)
	}
}

func TestValidationReportsEveryMistakeWithPaths(t *testing.T) {
	bad := `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata:
  name: Bad_Name
addressing:
  overlayIPv4: 100.64.0.0/10
  podIPv4: [10.0.0.0/8, 100.64.0.0/12]
cilium:
  routingMode: ipip
dataplane:
  firewall: bpf
regions:
  - name: eu-central
    gateways: 1
    clusters:
      - name: prod
        maxNodes: 6000
        clusterID: 7
      - name: prod
        podCIDRs: [192.168.0.0/24]
        clusterID: 7
  - name: eu-central
    underlayMTU: 100
    clusters:
      - name: a
        maxPods: 200000
        maxPodsPerNode: 0
`
	_, err := Parse([]byte(bad))
	want := []string{
		"metadata.name",
		"cilium.routingMode",
		"dataplane.firewall",
		"regions[0].gateways",
		"regions[0].clusters[0].maxNodes",
		"regions[0].clusters[1].name",
		"regions[0].clusters[1].clusterID",
		"regions[0].clusters[1].podCIDRs[0]", // outside supernet
		"regions[0].clusters[1].podCIDRs[0]", // too small
		"regions[1].name",
		"regions[1].underlayMTU",
		"regions[1].clusters[0].maxPods",
		"addressing.podIPv4[1]", // overlaps overlay
		// An explicit 0 does not silently become the default (issue 18 item 5).
		"regions[1].clusters[0].maxPodsPerNode",
	}
	if diff := cmp.Diff(want, paths(err)); diff != "" {
		t.Errorf("error paths (-want +got):\n%s\nfull error:\n%v", diff, err)
	}
	// Errors carry lines and fixes.
	var es Errors
	errors.As(err, &es)
	for _, e := range es {
		if e.Line == 0 {
			t.Errorf("%s: no line number", e.Path)
		}
		if e.Fix == "" {
			t.Errorf("%s: no fix", e.Path)
		}
	}
}

func TestUnknownFieldsAndWrongTypes(t *testing.T) {
	in := `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: t}
adressing: {}
regions:
  - name: r1
    gateway: 3
    clusters:
      - name: c
        maxNodes: lots
        podCIDR: 10.0.0.0/16
        labels: [a]
`
	_, err := Parse([]byte(in))
	want := []string{"adressing", "regions[0].gateway", "regions[0].clusters[0].maxNodes", "regions[0].clusters[0].podCIDR", "regions[0].clusters[0].labels"}
	if diff := cmp.Diff(want, paths(err)); diff != "" {
		t.Fatalf("paths (-want +got):\n%s\n%v", diff, err)
	}
	msg := err.Error()
	for _, s := range []string{`did you mean "addressing"?`, `did you mean "gateways"?`, `did you mean "podCIDRs"?`, "line 10", "expected an integer"} {
		if !strings.Contains(msg, s) {
			t.Errorf("error text lacks %q:\n%s", s, msg)
		}
	}
}

func TestLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: t}\naddressing: {podIPv6: [fd00::/40]}\nregions:\n")
	for i := range 21 {
		b.WriteString("  - name: r" + string(rune('a'+i)) + "\n")
		if i == 0 {
			b.WriteString("    clusters:\n")
			for j := range 11 {
				b.WriteString("      - {name: c" + string(rune('a'+j)) + ", maxNodes: 10}\n")
			}
		}
	}
	_, err := Parse([]byte(b.String()))
	if diff := cmp.Diff([]string{"regions", "regions[0].clusters"}, paths(err)); diff != "" {
		t.Errorf("(-want +got):\n%s\n%v", diff, err)
	}
	if !strings.Contains(err.Error(), "21 regions exceed the design limit of 20") || !strings.Contains(err.Error(), "11 clusters exceed the design limit of 10") {
		t.Errorf("limit messages missing: %v", err)
	}
}

func TestClusterIDRange(t *testing.T) {
	in := strings.Replace(good, "maxNodes: 100", "maxNodes: 100\n        clusterID: 300", 1)
	_, err := Parse([]byte(in))
	if err == nil || !strings.Contains(err.Error(), "cilium.maxConnectedClusters: 511") {
		t.Fatalf("want a hint to raise maxConnectedClusters, got %v", err)
	}
	in = strings.Replace(in, "kind: Mesh", "kind: Mesh\ncilium: {maxConnectedClusters: 511}", 1)
	if _, err := Parse([]byte(in)); err != nil {
		t.Fatalf("cluster ID 300 with 511 clusters: %v", err)
	}
}

func TestRoleUnderlayPrecedence(t *testing.T) {
	in := `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata: {name: t}
underlay: {mtu: 1500}
roles:
  operator: {underlayMTU: 1400}
  gateway: {underlayFamily: ipv6}
regions:
  - name: r
    underlayMTU: 9001
    roles:
      operator: {underlayMTU: 1300}
`
	m, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	type ru struct {
		MTU    int
		Family string
	}
	var got []ru
	for _, role := range []string{"node", "operator", "gateway"} {
		mtu, fam := m.RoleUnderlay(0, role)
		got = append(got, ru{mtu, fam})
	}
	want := []ru{{9001, "ipv4"}, {1300, "ipv4"}, {9001, "ipv6"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Error(diff)
	}
}

func TestDocumentLevelErrors(t *testing.T) {
	for name, in := range map[string]string{
		"empty":     "",
		"not yaml":  "a: [",
		"two docs":  good + "---\n" + good,
		"scalar":    "hello",
		"alias":     "apiVersion: &a x\nkind: *a\n",
		"too large": strings.Repeat("#", MaxSpecBytes+1),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(in))
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("want spec.Errors, got %v", err)
			}
		})
	}
}

// TestPodBlockArithmetic: a node's block holds maxPodsPerNode pods after
// Cilium's 4 reserved addresses (issue 18 item 3: 64 pods got a /26, which
// holds 60; 1 pod a /32, which holds none). internal/cilium/ciliumcheck
// checks the same with Cilium's own allocator.
func TestPodBlockArithmetic(t *testing.T) {
	for _, tc := range []struct{ ppn, maxNodes, block, cluster int }{
		{110, 5000, 7, 20}, {124, 5000, 7, 20}, {125, 5000, 8, 21}, {128, 5000, 8, 21}, {1, 1, 3, 3}, {30, 5000, 6, 19},
		{64, 50, 7, 13}, {60, 50, 6, 12}, {4, 2, 3, 4},
	} {
		if n := PodsPerBlock(PodBlockBits(tc.ppn)); n < tc.ppn {
			t.Errorf("a block of %d host bits holds %d pods, fewer than %d", PodBlockBits(tc.ppn), n, tc.ppn)
		}
		if b := PodBlockBits(tc.ppn); b != tc.block {
			t.Errorf("PodBlockBits(%d) = %d, want %d", tc.ppn, b, tc.block)
		}
		if c := ClusterPodBits(tc.maxNodes, tc.ppn); c != tc.cluster {
			t.Errorf("ClusterPodBits(%d, %d) = %d, want %d", tc.maxNodes, tc.ppn, c, tc.cluster)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("regions: [{name: a, clusters: [{name: b, podCIDRs: [::/0]}]}]"))
	f.Add([]byte("addressing: {overlayIPv4: 1.2.3.4/33}"))
	f.Add([]byte("regions:\n  - clusters:\n    - maxNodes: 99999999999999999999"))
	f.Add([]byte("{a: &x [*x]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err == nil && m == nil {
			t.Fatal("nil mesh without error")
		}
		if err != nil {
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error is not spec.Errors: %T %v", err, err)
			}
		}
	})
}

func TestAttestationPolicy(t *testing.T) {
	in := good + `attestation:
  ekRoots: ["not pem"]
  ekAllowList: [abc]
  pcrs: [0, 7, 7, 30]
  reference:
    9: [00]
  reattestInterval: 1s
  onFailure: panic
  bogus: 1
`
	_, err := Parse([]byte(in))
	if diff := cmp.Diff([]string{"attestation.bogus"}, paths(err)); diff != "" {
		t.Fatalf("unknown field inside attestation (-want +got):\n%s", diff)
	}
	in = strings.Replace(in, "  bogus: 1\n", "", 1)
	_, err = Parse([]byte(in))
	want := []string{"attestation.ekRoots[0]", "attestation.ekAllowList[0]", "attestation.pcrs[2]", "attestation.pcrs[3]",
		"attestation.reference.9", "attestation.reference.9[0]", "attestation.reattestInterval", "attestation.onFailure"}
	if diff := cmp.Diff(want, paths(err)); diff != "" {
		t.Errorf("(-want +got):\n%s\n%v", diff, err)
	}
	m, err := Parse([]byte(good + "attestation:\n  ekAllowList: [" + strings.Repeat("ab", 32) + "]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.AdmitsWithoutTPM("eu-central", "prod") || len(m.Attestation.PCRs) != 8 || m.Attestation.OnFailure != "quarantine" {
		t.Errorf("attestation defaults: %+v", m.Attestation)
	}
	m, _ = Parse([]byte(strings.Replace(good, "maxNodes: 100", "maxNodes: 100\n        admitWithoutTPM: true", 1) + "attestation:\n  ekAllowList: [" + strings.Repeat("ab", 32) + "]\n"))
	if !m.AdmitsWithoutTPM("eu-central", "prod") {
		t.Error("cluster override ignored")
	}
	m, _ = Parse([]byte(good))
	if !m.AdmitsWithoutTPM("eu-central", "prod") {
		t.Error("without an attestation policy every node is admitted (as weak)")
	}
}

// TestControllerAttestationPolicy: attestation.controller (mutual aTLS) is
// checked like the nodes' policy, with its own field paths, and gets the
// same PCR default.
func TestControllerAttestationPolicy(t *testing.T) {
	base := good + "attestation:\n  ekAllowList: [" + strings.Repeat("ab", 32) + "]\n"
	_, err := Parse([]byte(base + `  controller:
    ekAllowList: [abc]
    pcrs: [0, 99]
    reference:
      5: [zz]
    extra: 1
`))
	if diff := cmp.Diff([]string{"attestation.controller.extra"}, paths(err)); diff != "" {
		t.Fatalf("unknown field (-want +got):\n%s", diff)
	}
	_, err = Parse([]byte(base + `  controller:
    ekAllowList: [abc]
    pcrs: [0, 99]
    reference:
      5: [zz]
`))
	want := []string{"attestation.controller.ekAllowList[0]", "attestation.controller.pcrs[1]", "attestation.controller.reference.5", "attestation.controller.reference.5[0]"}
	if diff := cmp.Diff(want, paths(err)); diff != "" {
		t.Errorf("(-want +got):\n%s\n%v", diff, err)
	}
	_, err = Parse([]byte(base + "  controller: {pcrs: [7]}\n"))
	if diff := cmp.Diff([]string{"attestation.controller"}, paths(err)); diff != "" {
		t.Errorf("a controller policy trusting no EK (-want +got):\n%s", diff)
	}
	m, err := Parse([]byte(base + "  controller:\n    ekAllowList: [" + strings.Repeat("cd", 32) + "]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c := m.Attestation.Controller; c == nil || len(c.PCRs) != 8 {
		t.Errorf("controller policy defaults: %+v", c)
	}
}

// TestIssue18ExplicitZerosRefused: an explicit 0 in a field whose 0 means
// "default" is refused with its path and line, instead of silently
// becoming the default (gateways: 0 became 2, maxNodes: 0 5,000).
func TestIssue18ExplicitZerosRefused(t *testing.T) {
	for _, tc := range []struct{ yaml, path string }{
		{"underlay: {mtu: 0}", "underlay.mtu"},
		{"underlay: {wan: {mtu: 0}}", "underlay.wan.mtu"},
		{"roles: {operator: {underlayMTU: 0}}", "roles.operator.underlayMTU"},
		{"cilium: {maxConnectedClusters: 0}", "cilium.maxConnectedClusters"},
		{"routing: {bgp: true, bfd: {multiplier: 0}}", "routing.bfd.multiplier"},
		{"routing: {bgp: true, backbone: {peersPerRegion: 0}}", "routing.backbone.peersPerRegion"},
		{"regions: [{name: eu, gateways: 0, clusters: [{name: a}]}]", "regions[0].gateways"},
		{"regions: [{name: eu, underlayMTU: 0, clusters: [{name: a}]}]", "regions[0].underlayMTU"},
		{"regions: [{name: eu, clusters: [{name: a, maxNodes: 0}]}]", "regions[0].clusters[0].maxNodes"},
		{"regions: [{name: eu, clusters: [{name: a, maxPods: 0}]}]", "regions[0].clusters[0].maxPods"},
		{"regions: [{name: eu, clusters: [{name: a, maxPodsPerNode: 0}]}]", "regions[0].clusters[0].maxPodsPerNode"},
		{"regions: [{name: eu, clusters: [{name: a, clusterID: 0}]}]", "regions[0].clusters[0].clusterID"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			src := "apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\n" + tc.yaml + "\n"
			if !strings.Contains(tc.yaml, "regions") {
				src += "regions: [{name: eu, clusters: [{name: a}]}]\n"
			}
			_, err := Parse([]byte(src))
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("accepted: %v", err)
			}
			found := false
			for _, e := range es {
				if e.Path == tc.path && e.Line > 0 && strings.Contains(e.Msg, "cannot be 0") && strings.Contains(e.Fix, "leave the field out") {
					found = true
				}
			}
			if !found {
				t.Errorf("no error at %s with a line: %v", tc.path, err)
			}
		})
	}
	// 0 Geneve option bytes is a real value.
	if _, err := Parse([]byte("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\ncilium: {routingMode: geneve, geneveOptionBytes: 0}\nregions: [{name: eu, clusters: [{name: a}]}]\n")); err != nil {
		t.Errorf("geneveOptionBytes: 0: %v", err)
	}
}

// TestIssue18ErrorsOnceWhereWritten: a mistake in underlay.mtu is
// reported once, at its line — not again on every region's underlayMTU,
// which the user never wrote (they default to it).
func TestIssue18ErrorsOnceWhereWritten(t *testing.T) {
	_, err := Parse([]byte("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nunderlay: {mtu: 100}\nregions:\n  - {name: eu, clusters: [{name: a}]}\n  - {name: us, clusters: [{name: b}]}\n"))
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 || es[0].Path != "underlay.mtu" || es[0].Line != 4 {
		t.Errorf("got %v, want one error at underlay.mtu, line 4", err)
	}
}

// TestIssue18SizeLimitMessage: a spec over the limit is not reported with
// the size of what was read of it.
func TestIssue18SizeLimitMessage(t *testing.T) {
	_, err := Parse([]byte(strings.Repeat("#", MaxSpecBytes+1)))
	if err == nil || strings.Contains(err.Error(), fmt.Sprint(MaxSpecBytes+1)) || !strings.Contains(err.Error(), "larger than the limit of 4,194,304 bytes") {
		t.Errorf("got %v", err)
	}
}
