// Package doctor turns a mesh's spec, plan and live state into findings:
// each names what is wrong or risky, why it matters, the evidence, and
// the fix. It is pure: the CLI gathers the inputs (statemesh doctor).
//
// The thresholds are the numbers docs/best-practices.md gives.
package doctor

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/cilium"
	"github.com/statemesh/statemesh/internal/mtu"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
)

// Severities, worst first.
const (
	Error   = "error"   // traffic breaks or security is weaker than declared
	Warning = "warning" // works now, breaks under a likely event
	Info    = "info"    // costs performance or headroom
)

// Thresholds (docs/best-practices.md).
const (
	// ClockSkewWarn is where a node's clock is off by more than network
	// delay explains; ClockSkewError nears the 5 minutes node certificates
	// are backdated by, past which fresh certificates look not yet valid.
	ClockSkewWarn  = 2 * time.Second
	ClockSkewError = 4 * time.Minute
	// UtilizationWarn is the share of a supernet past which new regions or
	// clusters soon find no room.
	UtilizationWarn = 80.0
	// ImbalanceFactor: a gateway carrying more than this times its fair
	// share of a region's clusters (with at least 2 clusters per gateway,
	// below which rendezvous hashing cannot spread evenly).
	ImbalanceFactor = 1.5
	// LongReattest is a re-attestation interval past which a tampered
	// node stays in the mesh for long.
	LongReattest = 10 * time.Minute
)

// Finding is one thing the doctor reports.
type Finding struct {
	Severity string `json:"severity"`
	// Check names the rule ("path-mtu", "stale-handshakes", ...).
	Check    string `json:"check"`
	Subject  string `json:"subject"`
	Reason   string `json:"reason"`
	Evidence string `json:"evidence"`
	Fix      string `json:"fix"`
}

// Sort orders findings worst first, then by check and subject.
func Sort(fs []Finding) {
	rank := map[string]int{Error: 0, Warning: 1, Info: 2}
	slices.SortStableFunc(fs, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(rank[a.Severity], rank[b.Severity]), strings.Compare(a.Check, b.Check), strings.Compare(a.Subject, b.Subject))
	})
}

// Merge adds findings of b whose check and subject a does not already
// report (the live view of a problem supersedes the spec's).
func Merge(a, b []Finding) []Finding {
	seen := map[[2]string]bool{}
	for _, f := range a {
		seen[[2]string{f.Check, f.Subject}] = true
	}
	for _, f := range b {
		if !seen[[2]string{f.Check, f.Subject}] {
			a = append(a, f)
		}
	}
	return a
}

// Spec checks a validated spec and its plan before deployment.
func Spec(m *spec.Mesh, p *plan.Plan) []Finding {
	var out []Finding
	out = append(out, encapsulation(m, p)...)
	if m.Cilium.WireGuard {
		out = append(out, Finding{Severity: Warning, Check: "double-encryption", Subject: "cilium.wireguard",
			Reason:   "Cilium's WireGuard encrypts pod traffic that the StateMesh overlay already encrypts: twice the CPU per packet and less MTU for pods",
			Evidence: fmt.Sprintf("cilium.wireguard: true costs %d more bytes of pod MTU (Cilium's reserve for its WireGuard inside the overlay)", mtu.CiliumWireGuardOverhead),
			Fix:      "set cilium.wireguard: false (StateMesh's WireGuard covers every node-to-node path)"})
	}
	for _, u := range p.Usage {
		if strings.HasPrefix(u.Range, "cluster ") || u.Percent < UtilizationWarn {
			continue
		}
		out = append(out, Finding{Severity: Info, Check: "address-headroom", Subject: u.Range,
			Reason:   "little of the supernet is left for new regions or clusters",
			Evidence: fmt.Sprintf("%s: %.2f%% used (%s of %s addresses)", u.Prefix, u.Percent, u.Used, u.Total),
			Fix:      "add a supernet to addressing (podIPv4 takes a list) or lower maxPods/maxNodes where clusters are oversized"})
	}
	kpr := m.Cilium.KubeProxyReplacement == nil || *m.Cilium.KubeProxyReplacement
	var noAPI []string
	for ri, r := range m.Regions {
		for ci, c := range r.Clusters {
			if kpr && c.KubeAPIServer == "" {
				noAPI = append(noAPI, fmt.Sprintf("regions[%d].clusters[%d] (%s/%s)", ri, ci, r.Name, c.Name))
			}
		}
	}
	if len(noAPI) > 0 {
		out = append(out, Finding{Severity: Info, Check: "kube-proxy-replacement", Subject: fmt.Sprintf("%d clusters", len(noAPI)),
			Reason:   "Cilium can replace kube-proxy only when it knows the API server's address; render cilium leaves kube-proxy in place for these clusters",
			Evidence: "no kubeAPIServer: " + strings.Join(firstN(noAPI, 5), ", "),
			Fix:      "set kubeAPIServer: HOST:PORT on each of these clusters"})
	}
	out = append(out, attestation(m)...)
	Sort(out)
	return out
}

func encapsulation(m *spec.Mesh, p *plan.Plan) []Finding {
	if m.Cilium.RoutingMode == "" || m.Cilium.RoutingMode == spec.RoutingNative {
		return nil
	}
	// The tunnel runs inside the IPv4 overlay, whatever the underlay (as
	// the planner counts it).
	over := mtu.EncapOverhead(m.Cilium.RoutingMode, mtu.IPv4, m.Cilium.GeneveOptionBytes)
	smallest := 0
	for _, r := range p.Regions {
		for _, c := range r.Clusters {
			if smallest == 0 || c.PodMTU < smallest {
				smallest = c.PodMTU
			}
		}
	}
	return []Finding{{Severity: Warning, Check: "encapsulation", Subject: "cilium.routingMode",
		Reason: "every cluster's pod CIDR is routed through the StateMesh overlay, so Cilium's native routing works and a tunnel only costs MTU and CPU",
		Evidence: fmt.Sprintf("cilium.routingMode: %s takes %d bytes per packet: pods get %d bytes where native routing gives %d",
			m.Cilium.RoutingMode, over, smallest, smallest+over),
		Fix: "set cilium.routingMode: native (keep a tunnel only if nodes must reach pods of nodes outside the mesh)"}}
}

func attestation(m *spec.Mesh) []Finding {
	var out []Finding
	var sensitive []string
	if m.Policy != nil {
		for _, s := range m.Policy.Segments {
			if s.Sensitive {
				sensitive = append(sensitive, s.Name)
			}
		}
	}
	a := m.Attestation
	if a == nil {
		if len(sensitive) > 0 {
			out = append(out, Finding{Severity: Error, Check: "attestation", Subject: "attestation",
				Reason:   "without attestation every node is weak, and weak nodes never join sensitive segments: the sensitive segments are empty",
				Evidence: "sensitive segments " + strings.Join(sensitive, ", ") + "; no attestation section",
				Fix:      "add attestation (ekRoots or ekAllowList, pcrs, reference) so TPM-backed nodes are admitted as strong"})
		}
		return out
	}
	if a.Controller == nil {
		out = append(out, Finding{Severity: Info, Check: "mutual-atls", Subject: "attestation.controller",
			Reason:   "agents do not attest the controller: nodes prove their TPM state to it, but a controller running on a tampered host would still be obeyed",
			Evidence: "no attestation.controller in the spec",
			Fix:      "run the controller with --tpm, add attestation.controller (ekRoots or ekAllowList, pcrs, reference) and give agents --controller-attestation mesh.yaml (docs/attestation.md)"})
	}
	if d, err := time.ParseDuration(a.ReattestInterval); err == nil && d > LongReattest {
		out = append(out, Finding{Severity: Info, Check: "attestation", Subject: "attestation.reattestInterval",
			Reason:   "a node whose measurements change stays in the mesh until its next re-attestation",
			Evidence: "reattestInterval: " + a.ReattestInterval,
			Fix:      fmt.Sprintf("use %s or less (one quote per node per interval; the verifier does ~4,500/s per core)", LongReattest)})
	}
	if len(sensitive) == 0 || m.Policy == nil {
		return out
	}
	// Weak nodes in the clusters a sensitive segment draws from: the
	// policy keeps them out of the segment, but they share the cluster's
	// control plane and Cilium identity space.
	for _, s := range m.Policy.Segments {
		if !s.Sensitive {
			continue
		}
		for ri, r := range m.Regions {
			for ci, c := range r.Clusters {
				if !segmentMayCover(s.Match, r.Name, c.Name) {
					continue
				}
				admit := a.AdmitWithoutTPM
				if c.AdmitWithoutTPM != nil {
					admit = *c.AdmitWithoutTPM
				}
				if admit {
					out = append(out, Finding{Severity: Warning, Check: "weak-next-to-sensitive", Subject: r.Name + "/" + c.Name,
						Reason:   fmt.Sprintf("the cluster admits weak nodes and holds members of sensitive segment %s: the policy denies them, but they share the cluster's control plane", s.Name),
						Evidence: fmt.Sprintf("segment %s matches the cluster; admitWithoutTPM is true for it", s.Name),
						Fix:      fmt.Sprintf("set regions[%d].clusters[%d].admitWithoutTPM: false, or narrow policy.segments[%s].match to clusters without weak nodes", ri, ci, s.Name)})
				}
			}
		}
	}
	return out
}

// segmentMayCover says whether a segment's match can select nodes of a
// cluster (labels and classes are not known before nodes enroll).
func segmentMayCover(mt spec.Match, region, cluster string) bool {
	if len(mt.Regions) > 0 && !slices.Contains(mt.Regions, region) {
		return false
	}
	if len(mt.Clusters) > 0 && !slices.Contains(mt.Clusters, region+"/"+cluster) {
		return false
	}
	return true
}

// CiliumValues checks Cilium Helm values in use (a file an operator
// deployed, rendered or not) against the plan: the cluster must be known
// and its MTU must be the plan's. Without MTU Cilium takes the MTU of the
// default route's device, the underlay, which is too large for the
// overlay.
func CiliumValues(m *spec.Mesh, p *plan.Plan, file string, data []byte) []Finding {
	var v struct {
		Cluster struct {
			Name string `yaml:"name"`
		} `yaml:"cluster"`
		MTU int `yaml:"MTU"`
	}
	if err := yaml.Unmarshal(data, &v); err != nil {
		return []Finding{{Severity: Error, Check: "cilium-mtu", Subject: file, Reason: "the values do not parse as YAML",
			Evidence: err.Error(), Fix: "re-render them: statemesh render cilium --cluster REGION/CLUSTER"}}
	}
	var key string
	for _, r := range p.Regions {
		for _, c := range r.Clusters {
			if c.CiliumName == v.Cluster.Name {
				key = r.Name + "/" + c.Name
			}
		}
	}
	if key == "" {
		return []Finding{{Severity: Error, Check: "cilium-mtu", Subject: file,
			Reason:   "the values name a cluster the plan does not have, so nothing in them can be checked",
			Evidence: fmt.Sprintf("cluster.name: %q", v.Cluster.Name),
			Fix:      "set cluster.name to the cluster's Cilium name (statemesh plan lists them) or re-render with statemesh render cilium"}}
	}
	want, err := cilium.ClusterValuesFor(m, p, key)
	if err != nil {
		return []Finding{{Severity: Error, Check: "cilium-mtu", Subject: key, Reason: "the plan cannot render this cluster", Evidence: err.Error(),
			Fix: "statemesh validate -f the spec and fix what it reports"}}
	}
	if v.MTU == want.Values.MTU {
		return nil
	}
	ev := fmt.Sprintf("%s: MTU %d, the plan's is %d (pods %d)", file, v.MTU, want.Values.MTU, want.PodMTU)
	if v.MTU == 0 {
		ev = fmt.Sprintf("%s sets no MTU: Cilium takes the default route device's (the underlay's, e.g. 1500); the plan's is %d", file, want.Values.MTU)
	}
	return []Finding{{Severity: Error, Check: "cilium-mtu", Subject: key,
		Reason:   "Cilium's MTU disagrees with the plan: a larger one makes pods send packets the overlay drops, a smaller one wastes bandwidth",
		Evidence: ev,
		Fix:      fmt.Sprintf("set MTU: %d in the values (statemesh render cilium --cluster %s renders them whole)", want.Values.MTU, key)}}
}
