package doctor

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/cilium"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
)

func load(t *testing.T, file string, edit func(*spec.Mesh)) (*spec.Mesh, *plan.Plan) {
	t.Helper()
	data, err := os.ReadFile("../../examples/" + file)
	if err != nil {
		t.Fatal(err)
	}
	m, err := spec.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(m)
	}
	p, err := plan.Compute(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m, p
}

func find(fs []Finding, check string) []Finding {
	var out []Finding
	for _, f := range fs {
		if f.Check == check {
			out = append(out, f)
		}
	}
	return out
}

func TestSpecFindings(t *testing.T) {
	m, p := load(t, "small.yaml", nil)
	clean := Spec(m, p)
	for _, c := range []string{"encapsulation", "double-encryption", "attestation"} {
		if f := find(clean, c); len(f) != 0 {
			t.Errorf("small.yaml: unexpected %s finding: %+v", c, f)
		}
	}

	m, p = load(t, "small.yaml", func(m *spec.Mesh) {
		m.Cilium.RoutingMode = spec.RoutingVXLAN
		m.Cilium.WireGuard = true
		m.Underlay.Family = "ipv6" // the tunnel still runs in the IPv4 overlay
	})
	fs := Spec(m, p)
	enc := find(fs, "encapsulation")
	if len(enc) != 1 || !strings.Contains(enc[0].Evidence, "50 bytes") || !strings.Contains(enc[0].Fix, "routingMode: native") {
		t.Errorf("vxlan: %+v", enc)
	}
	if f := find(fs, "double-encryption"); len(f) != 1 || f[0].Severity != Warning {
		t.Errorf("cilium.wireguard: %+v", f)
	}
	if f := find(fs, "double-encryption"); len(f) != 1 || !strings.Contains(f[0].Evidence, "95 more bytes") {
		t.Errorf("double encryption costs Cilium's WireGuard reserve: %+v", f)
	}
	if fs[0].Severity != Warning {
		t.Errorf("findings not sorted worst first: %+v", fs[0])
	}
}

func TestSpecAttestationFindings(t *testing.T) {
	m, p := load(t, "policy.yaml", nil)
	if m.Policy == nil {
		t.Fatal("policy.yaml should have a sensitive segment")
	}
	m.Attestation = &spec.Attestation{ReattestInterval: "1h", AdmitWithoutTPM: true}
	if fs := find(Spec(m, p), "attestation"); len(fs) != 1 || fs[0].Subject != "attestation.reattestInterval" {
		t.Errorf("long re-attestation interval: %+v", fs)
	}
	fs := find(Spec(m, p), "weak-next-to-sensitive")
	if len(fs) == 0 || !strings.Contains(fs[0].Fix, "admitWithoutTPM: false") {
		t.Errorf("admitWithoutTPM next to a sensitive segment: %+v", fs)
	}
	if fs := find(Spec(m, p), "mutual-atls"); len(fs) != 1 || fs[0].Severity != Info {
		t.Errorf("attestation without attestation.controller: %+v", fs)
	}
	m.Attestation.Controller = &spec.ControllerAttestation{EKAllowList: []string{strings.Repeat("ab", 32)}}
	if fs := find(Spec(m, p), "mutual-atls"); len(fs) != 0 {
		t.Errorf("with attestation.controller: %+v", fs)
	}
	// Running: the spec wants mutual aTLS, the controller has no TPM.
	no, yes := false, true
	if fs := find(Running(Live{Mesh: m, ControllerTPM: &no}), "mutual-atls"); len(fs) != 1 || fs[0].Severity != Error || !strings.Contains(fs[0].Fix, "--tpm") {
		t.Errorf("controller without a TPM: %+v", fs)
	}
	if fs := find(Running(Live{Mesh: m, ControllerTPM: &yes}), "mutual-atls"); len(fs) != 0 {
		t.Errorf("controller with a TPM: %+v", fs)
	}
	m.Attestation = nil
	if fs := find(Spec(m, p), "attestation"); len(fs) != 1 || fs[0].Severity != Error {
		t.Errorf("sensitive segment without attestation: %+v", fs)
	}
}

func TestRunningPathMTU(t *testing.T) {
	m, _ := load(t, "small.yaml", nil)
	path := func(from, fromRegion, peer, region string, mtu int) api.Path {
		return api.Path{From: from, FromRegion: fromRegion, FromRole: "gateway",
			PathProbe: api.PathProbe{Peer: peer, Region: region, RTTMillis: 1, PathMTU: mtu, PlannedMTU: 1440}}
	}
	l := Live{Mesh: m, Paths: []api.Path{
		path("eu-gw0", "eu-central", "us-gw0", "us-east", 1340),
		path("eu-gw0", "eu-central", "us-gw1", "us-east", 1340),
		path("us-gw1", "us-east", "eu-gw0", "eu-central", 1340),
		path("eu-gw1", "eu-central", "us-gw1", "us-east", 1440), // fine
		path("n1", "eu-central", "eu-gw1", "eu-central", 1440),  // fine
	}, Nodes: []api.Node{{Name: "eu-gw0", Role: "gateway"}}}
	fs := find(Running(l), "path-mtu")
	if len(fs) != 1 {
		t.Fatalf("want one WAN finding, got %+v", fs)
	}
	f := fs[0]
	if f.Severity != Error || !strings.Contains(f.Subject, "WAN eu-central ↔ us-east via eu-gw0") {
		t.Errorf("subject: %q", f.Subject)
	}
	if !strings.Contains(f.Fix, "underlay.wan.mtu: 1400") || !strings.Contains(f.Fix, "gateway eu-gw0") {
		t.Errorf("fix does not name the field and the gateway: %q", f.Fix)
	}
	if !strings.Contains(f.Evidence, "1340 bytes crossed, planned 1440") {
		t.Errorf("evidence: %q", f.Evidence)
	}

	// Inside a region, the fix is the region's underlay MTU.
	l.Paths = []api.Path{path("n1", "us-east", "us-gw0", "us-east", 1420)}
	fs = find(Running(l), "path-mtu")
	if len(fs) != 1 || !strings.Contains(fs[0].Fix, "regions[1].underlayMTU: 1480") {
		t.Errorf("in-region: %+v", fs)
	}
	// Planned MTU reached, or unreachable: no MTU finding.
	l.Paths = []api.Path{path("n1", "us-east", "us-gw0", "us-east", 1440), {From: "n2", PathProbe: api.PathProbe{Peer: "us-gw0", Loss: 1, PlannedMTU: 1440}}}
	fs = Running(l)
	if len(find(fs, "path-mtu")) != 0 || len(find(fs, "unreachable-gateway")) != 1 {
		t.Errorf("fine or unreachable paths: %+v", fs)
	}
}

func TestRunningHealthSkewStale(t *testing.T) {
	now := time.Now()
	l := Live{
		Status: api.Status{
			StalePeers: []string{"n3"},
			Regions: []api.RegionStatus{
				{Name: "a", Gateways: []api.Gateway{{Name: "a0", Healthy: true}, {Name: "a1"}}, Clusters: []api.ClusterStatus{{Name: "c"}}},
				{Name: "b", Gateways: []api.Gateway{{Name: "b0"}}, Clusters: []api.ClusterStatus{{Name: "c"}}},
				{Name: "c", Gateways: []api.Gateway{{Name: "c0", Healthy: true, Clusters: []string{"1", "2", "3", "4", "5"}}, {Name: "c1", Healthy: true, Clusters: []string{"6"}}},
					Clusters: []api.ClusterStatus{{Name: "1"}, {Name: "2"}, {Name: "3"}, {Name: "4"}, {Name: "5"}, {Name: "6"}}},
			},
		},
		Nodes: []api.Node{
			{Name: "ok", ReportedAt: &now, ClockSkewMillis: 30},
			{Name: "drift", ReportedAt: &now, ClockSkewMillis: -3500},
			{Name: "far", ReportedAt: &now, ClockSkewMillis: 10 * 60 * 1000},
		},
	}
	fs := Running(l)
	health := find(fs, "gateway-health")
	if len(health) != 2 || health[0].Subject != "region b" || health[0].Severity != Error || health[1].Subject != "region a" {
		t.Errorf("gateway health: %+v", health)
	}
	if f := find(fs, "gateway-load"); len(f) != 1 || f[0].Subject != "c0" {
		t.Errorf("load: %+v", f)
	}
	skew := find(fs, "clock-skew")
	if len(skew) != 2 || skew[0].Subject != "far" || skew[0].Severity != Error || skew[1].Subject != "drift" || !strings.Contains(skew[1].Evidence, "-3.5 s") {
		t.Errorf("skew: %+v", skew)
	}
	if f := find(fs, "stale-handshakes"); len(f) != 1 || f[0].Subject != "n3" {
		t.Errorf("stale: %+v", f)
	}
}

func TestRunningWeakNextToSensitive(t *testing.T) {
	m, _ := load(t, "policy.yaml", nil)
	var sens spec.Segment
	for _, s := range m.Policy.Segments {
		if s.Sensitive {
			sens = s
		}
	}
	region, cluster := m.Regions[0].Name, m.Regions[0].Clusters[0].Name
	if len(sens.Match.Clusters) > 0 {
		region, cluster, _ = strings.Cut(sens.Match.Clusters[0], "/")
	}
	strong := api.Node{Name: "s1", Region: region, Cluster: cluster, Role: "node", Class: "strong", State: "active", Labels: sens.Match.Labels}
	weak := api.Node{Name: "w1", Region: region, Cluster: cluster, Role: "node", Class: "weak", State: "active"}
	l := Live{Mesh: m, Nodes: []api.Node{strong, weak}}
	if f := find(Running(l), "weak-next-to-sensitive"); len(f) != 1 || !strings.Contains(f[0].Evidence, "w1") {
		t.Errorf("weak node beside %s: %+v", sens.Name, f)
	}
	l.Nodes = []api.Node{strong}
	if f := find(Running(l), "weak-next-to-sensitive"); len(f) != 0 {
		t.Errorf("no weak node: %+v", f)
	}
}

func TestCiliumValues(t *testing.T) {
	m, p := load(t, "small.yaml", nil)
	rv, err := cilium.ClusterValuesFor(m, p, "eu-central/prod")
	if err != nil {
		t.Fatal(err)
	}
	good, err := cilium.ValuesYAML(rv, m.Metadata.Name)
	if err != nil {
		t.Fatal(err)
	}
	if f := CiliumValues(m, p, "v.yaml", good); len(f) != 0 {
		t.Errorf("rendered values: %+v", f)
	}
	name := rv.Values.Cluster.Name
	for _, tc := range []struct{ values, want string }{
		{"cluster:\n  name: " + name + "\nMTU: 1500\n", "MTU 1500"},
		{"cluster:\n  name: " + name + "\n", "sets no MTU"},
		{"cluster:\n  name: nope\nMTU: 1400\n", `"nope"`},
		{"cluster: [", "parse"},
	} {
		f := CiliumValues(m, p, "v.yaml", []byte(tc.values))
		if len(f) != 1 || f[0].Severity != Error || !strings.Contains(f[0].Evidence+f[0].Reason, tc.want) {
			t.Errorf("%q: %+v", tc.values, f)
		}
	}
}

// TestIssue15PathMTUOverIPv6 is a too-small path whose endpoints are IPv6
// in a spec that plans IPv4 (the default): the link carries the probed
// size plus 80 bytes of WireGuard over IPv6, not 60, and the fix must name
// the family, or the planner keeps subtracting 60.
func TestIssue15PathMTUOverIPv6(t *testing.T) {
	m, _ := load(t, "small.yaml", nil)
	l := Live{Mesh: m,
		Paths: []api.Path{{From: "n1", FromRegion: "us-east", FromRole: "node",
			PathProbe: api.PathProbe{Peer: "us-gw0", Region: "us-east", RTTMillis: 1, PathMTU: 1420, PlannedMTU: 1440}}},
		Nodes: []api.Node{
			{Name: "n1", Region: "us-east", Role: "node", Endpoint: "[2001:db8::11]:51820"},
			{Name: "us-gw0", Region: "us-east", Role: "gateway", Endpoint: "[2001:db8::1]:51820"},
		}}
	fs := find(Running(l), "path-mtu")
	if len(fs) != 1 {
		t.Fatalf("want one path-mtu finding, got %+v", fs)
	}
	for _, want := range []string{"regions[1].underlayMTU: 1500", "regions[1].underlayFamily: ipv6", "1420 + 80 of WireGuard over ipv6"} {
		if !strings.Contains(fs[0].Fix, want) {
			t.Errorf("fix lacks %q: %s", want, fs[0].Fix)
		}
	}
	// The mismatch itself: the interfaces are 20 bytes too large.
	fs = find(Running(l), "underlay-family")
	if len(fs) != 2 {
		t.Fatalf("want a finding for the nodes and one for the gateways, got %+v", fs)
	}
	if fs[0].Severity != Error || !strings.Contains(fs[0].Reason, "20 bytes too large") || !strings.Contains(fs[0].Fix, "underlayFamily: ipv6") {
		t.Errorf("underlay-family: %+v", fs[0])
	}

	// Planned as IPv6 (the region's family): 80 bytes, and no mismatch.
	m, _ = load(t, "small.yaml", func(m *spec.Mesh) { m.Regions[1].UnderlayFamily = "ipv6" })
	l.Mesh = m
	fs = Running(l)
	if len(find(fs, "underlay-family")) != 0 {
		t.Errorf("family as planned: %+v", find(fs, "underlay-family"))
	}
	if f := find(fs, "path-mtu"); len(f) != 1 || !strings.Contains(f[0].Fix, "regions[1].underlayMTU: 1500") || strings.Contains(f[0].Fix, "underlayFamily") {
		t.Errorf("path-mtu over a planned IPv6 underlay: %+v", f)
	}
	// IPv4 endpoints in a region planned as IPv6: 20 bytes wasted (info).
	l.Nodes[0].Endpoint, l.Nodes[1].Endpoint = "192.0.2.11:51820", "192.0.2.1:51820"
	if f := find(Running(l), "underlay-family"); len(f) != 2 || f[0].Severity != Info || !strings.Contains(f[0].Reason, "20 bytes of MTU for nothing") {
		t.Errorf("IPv4 endpoints planned as IPv6: %+v", f)
	}
}

// TestRunningUnattestedBackendHosts: Netmaker hosts no attested node owns
// are reported (issue 17, item 6: they were reported nowhere).
func TestRunningUnattestedBackendHosts(t *testing.T) {
	l := Live{Status: api.Status{Backends: []api.BackendStatus{{Name: "netmaker", Healthy: true, Unattested: []string{"laptop-7 in nm-eu"}, RemovedUnattested: 2, Ungated: true}}}}
	if fs := find(Running(l), "backend-unattested"); len(fs) != 1 || !strings.Contains(fs[0].Subject, "laptop-7 in nm-eu") {
		t.Errorf("unattested member: %+v", fs)
	}
	if fs := find(Running(l), "backend-unattested-removed"); len(fs) != 1 || !strings.Contains(fs[0].Evidence, "2 hosts") {
		t.Errorf("unattested removals: %+v", fs)
	}
}

// Issue 22: the doctor says which data plane each node runs and why; a
// node asked for eBPF that cannot run it is a warning.
func TestRunningDataplane(t *testing.T) {
	l := Live{Nodes: []api.Node{
		{Name: "gw-b", Dataplane: "ebpf: XDP guard on eth0; overlay policy in nftables"},
		{Name: "gw-a", Dataplane: "ebpf: XDP guard on eth0; overlay policy in nftables"},
		{Name: "old", Dataplane: "nftables: eBPF was asked for but cannot run: the XDP guard cannot run on this kernel: creating map smx_sources: operation not permitted"},
		{Name: "n1", Dataplane: "nftables: chosen (--dataplane or the spec's dataplane.firewall)"},
		{Name: "silent"},
	}}
	var got []string
	for _, f := range Running(l) {
		if strings.HasPrefix(f.Check, "dataplane") {
			got = append(got, f.Severity+" "+f.Check+" "+f.Subject)
		}
	}
	want := []string{"warning dataplane-nftables old", "info dataplane-ebpf gw-a, gw-b", "info dataplane-nftables n1"}
	if !slices.Equal(want, got) {
		t.Errorf("dataplane findings %q, want %q", got, want)
	}
}
