package spec

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

var dnsName = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// IsDNSLabel reports whether s is a DNS label (names of regions, clusters,
// segments, rules, clients).
func IsDNSLabel(s string) bool { return dnsLabel.MatchString(s) }

// MaxClientSegments is how many segments may take external clients (each
// gets one block of every region's clients range).
const MaxClientSegments = 16

// MaxCiliumClusterName is Cilium's limit on cluster.name.
const MaxCiliumClusterName = 32

// Validate checks a defaulted spec and returns every mistake at once.
func (m *Mesh) Validate() error { return m.validate(nil).Err() }

// CiliumClusterName is the name a cluster has in Cilium: region-cluster.
func CiliumClusterName(region, cluster string) string { return region + "-" + cluster }

// CiliumReservedPerNode is how many addresses of a node's pod block Cilium
// (cluster-pool IPAM) never gives to pods: the block's first and last
// address (its ipallocator.NewCIDRRange leaves them out), the router
// address of cilium_host and the health endpoint's.
const CiliumReservedPerNode = 4

// PodBlockBits returns the number of host bits of a node's pod block: the
// smallest power of two that holds maxPodsPerNode pods once Cilium has
// taken its reserved addresses (64 pods need a /25, not a /26).
func PodBlockBits(maxPodsPerNode int) int {
	return bits.Len(uint(max(maxPodsPerNode, 1) + CiliumReservedPerNode - 1))
}

// PodsPerBlock is how many pods Cilium can place in a node block of the
// given host bits.
func PodsPerBlock(hostBits int) int {
	return max(1<<hostBits-CiliumReservedPerNode, 0)
}

// ClusterPodBits returns the host bits a cluster's pod CIDR needs: room for
// maxNodes node blocks.
func ClusterPodBits(maxNodes, maxPodsPerNode int) int {
	return PodBlockBits(maxPodsPerNode) + countBits(maxNodes)
}

// countBits is the smallest number of bits that counts n things.
func countBits(n int) int {
	if n <= 1 {
		return 0
	}
	return bits.Len(uint(n - 1))
}

type rangeRef struct {
	path   string
	prefix netip.Prefix
}

func (m *Mesh) validate(lines map[string]int) Errors {
	e := &errs{lines: lines}
	if m.APIVersion != APIVersion {
		e.add("apiVersion", "set apiVersion: "+APIVersion, "unsupported apiVersion %q", m.APIVersion)
	}
	if m.Kind != Kind {
		e.add("kind", "set kind: "+Kind, "unsupported kind %q", m.Kind)
	}
	if !dnsLabel.MatchString(m.Metadata.Name) {
		e.add("metadata.name", "use lowercase letters, digits and '-', at most 63 characters", "mesh name %q is not a DNS label", m.Metadata.Name)
	}

	var ranges []rangeRef
	ranges = append(ranges, m.checkPrefix(e, "addressing.overlayIPv4", m.Addressing.OverlayIPv4, 4, 8, 28)...)
	if m.Addressing.OverlayIPv6 != "" {
		ranges = append(ranges, m.checkPrefix(e, "addressing.overlayIPv6", m.Addressing.OverlayIPv6, 6, 16, 112)...)
	}
	var podV4, podV6 []netip.Prefix
	for i, s := range m.Addressing.PodIPv4 {
		r := m.checkPrefix(e, fmt.Sprintf("addressing.podIPv4[%d]", i), s, 4, 8, 30)
		ranges = append(ranges, r...)
		for _, x := range r {
			podV4 = append(podV4, x.prefix)
		}
	}
	for i, s := range m.Addressing.PodIPv6 {
		r := m.checkPrefix(e, fmt.Sprintf("addressing.podIPv6[%d]", i), s, 6, 16, 120)
		ranges = append(ranges, r...)
		for _, x := range r {
			podV6 = append(podV6, x.prefix)
		}
	}

	checkUnderlay(e, "underlay.mtu", "underlay.family", m.Underlay.MTU, m.Underlay.Family)
	checkUnderlay(e, "underlay.wan.mtu", "underlay.wan.family", m.Underlay.WAN.MTU, m.Underlay.WAN.Family)
	checkRoles(e, "roles", m.Roles)

	switch m.Cilium.RoutingMode {
	case RoutingNative, RoutingVXLAN, RoutingGeneve:
	default:
		e.add("cilium.routingMode", "use native (recommended), vxlan or geneve", "unknown routing mode %q", m.Cilium.RoutingMode)
	}
	if d := m.Dataplane; d != nil {
		switch d.Firewall {
		case "", DataplaneEBPF, DataplaneNFTables, DataplaneAuto:
		default:
			e.add("dataplane.firewall", "use ebpf, nftables or auto", "unknown data plane %q", d.Firewall)
		}
	}
	if m.Cilium.MaxConnectedClusters != 255 && m.Cilium.MaxConnectedClusters != 511 {
		e.add("cilium.maxConnectedClusters", "use 255 or 511", "Cilium supports 255 or 511 connected clusters, not %d", m.Cilium.MaxConnectedClusters)
	}
	if d := m.Cilium.ClustermeshDomain; d != "" && !dnsName.MatchString(d) {
		e.add("cilium.clustermeshDomain", "use a DNS name such as mesh.cilium.io", "%q is not a DNS name", d)
	}
	if o := m.Cilium.GeneveOptionBytes; o < 0 || o > 252 || o%4 != 0 {
		e.add("cilium.geneveOptionBytes", "use a multiple of 4 between 0 and 252", "invalid Geneve option length %d", o)
	}
	if m.Cilium.GeneveOptionBytes != 0 && m.Cilium.RoutingMode != RoutingGeneve {
		e.add("cilium.geneveOptionBytes", "remove it, or set routingMode: geneve", "Geneve options are set but routing mode is %s", m.Cilium.RoutingMode)
	}

	checkAttestation(e, m.Attestation)
	m.checkPolicy(e)
	m.checkRouting(e)
	if len(m.Regions) == 0 {
		e.add("regions", "add at least one region", "the mesh has no regions")
	}
	if len(m.Regions) > MaxRegions {
		e.add("regions", fmt.Sprintf("split the fleet into meshes of at most %d regions", MaxRegions), "%d regions exceed the design limit of %d", len(m.Regions), MaxRegions)
	}
	regionNames := map[string]int{}
	clusterIDs := map[int]string{}
	for i, r := range m.Regions {
		p := fmt.Sprintf("regions[%d]", i)
		if !dnsLabel.MatchString(r.Name) {
			e.add(p+".name", "use lowercase letters, digits and '-' (e.g. eu-central)", "region name %q is not a DNS label", r.Name)
		} else if j, dup := regionNames[r.Name]; dup {
			e.add(p+".name", "give every region a unique name", "region %q is already defined at regions[%d]", r.Name, j)
		} else {
			regionNames[r.Name] = i
		}
		if r.Gateways < MinGateways || r.Gateways > MaxGateways {
			e.add(p+".gateways", fmt.Sprintf("use between %d and %d gateways (HA needs at least %d)", MinGateways, MaxGateways, MinGateways), "a region needs %d to %d gateways, got %d", MinGateways, MaxGateways, r.Gateways)
		}
		checkUnderlay(e, p+".underlayMTU", p+".underlayFamily", r.UnderlayMTU, r.UnderlayFamily)
		checkRoles(e, p+".roles", r.Roles)
		checkLabels(e, p+".labels", r.Labels)
		if len(r.Clusters) > MaxClustersPerRegion {
			e.add(p+".clusters", fmt.Sprintf("move clusters to another region; at most %d per region", MaxClustersPerRegion), "%d clusters exceed the design limit of %d", len(r.Clusters), MaxClustersPerRegion)
		}
		clusterNames := map[string]int{}
		for j, c := range r.Clusters {
			cp := fmt.Sprintf("%s.clusters[%d]", p, j)
			if !dnsLabel.MatchString(c.Name) {
				e.add(cp+".name", "use lowercase letters, digits and '-'", "cluster name %q is not a DNS label", c.Name)
			} else if k, dup := clusterNames[c.Name]; dup {
				e.add(cp+".name", "give every cluster of a region a unique name", "cluster %q is already defined at %s.clusters[%d]", c.Name, p, k)
			} else {
				clusterNames[c.Name] = j
				if n := CiliumClusterName(r.Name, c.Name); len(n) > MaxCiliumClusterName {
					e.add(cp+".name", fmt.Sprintf("shorten the region or cluster name so that region-cluster has at most %d characters", MaxCiliumClusterName), "Cilium cluster name %q is %d characters long", n, len(n))
				}
			}
			if c.MaxNodes < 1 || c.MaxNodes > MaxNodesPerCluster {
				e.add(cp+".maxNodes", fmt.Sprintf("use 1..%d; split larger clusters", MaxNodesPerCluster), "maxNodes %d is outside the design limit", c.MaxNodes)
			}
			if c.MaxPods < 1 || c.MaxPods > MaxPodsPerCluster {
				e.add(cp+".maxPods", fmt.Sprintf("use 1..%d", MaxPodsPerCluster), "maxPods %d is outside the design limit", c.MaxPods)
			}
			if c.MaxPodsPerNode < 1 || c.MaxPodsPerNode > MaxPodsPerNodeLimit {
				e.add(cp+".maxPodsPerNode", fmt.Sprintf("use 1..%d (Kubernetes defaults to 110)", MaxPodsPerNodeLimit), "maxPodsPerNode %d is out of range", c.MaxPodsPerNode)
			} else if c.MaxNodes >= 1 && c.MaxPods > c.MaxNodes*c.MaxPodsPerNode {
				e.add(cp+".maxPods", fmt.Sprintf("lower maxPods to %d or raise maxNodes/maxPodsPerNode", c.MaxNodes*c.MaxPodsPerNode), "maxPods %d can never be reached with %d nodes × %d pods per node", c.MaxPods, c.MaxNodes, c.MaxPodsPerNode)
			}
			if c.ClusterID != 0 {
				if c.ClusterID < 1 || c.ClusterID > m.Cilium.MaxConnectedClusters {
					fix := fmt.Sprintf("use 1..%d", m.Cilium.MaxConnectedClusters)
					if c.ClusterID <= 511 && m.Cilium.MaxConnectedClusters == 255 {
						fix += ", or set cilium.maxConnectedClusters: 511"
					}
					e.add(cp+".clusterID", fix, "cluster ID %d is out of range", c.ClusterID)
				} else if other, dup := clusterIDs[c.ClusterID]; dup {
					e.add(cp+".clusterID", "leave clusterID out to have one assigned, or pick an unused one", "cluster ID %d is already used by %s", c.ClusterID, other)
				} else {
					clusterIDs[c.ClusterID] = r.Name + "/" + c.Name
				}
			}
			checkLabels(e, cp+".labels", c.Labels)
			for _, f := range []struct{ path, v string }{{cp + ".clustermeshEndpoint", c.ClustermeshEndpoint}, {cp + ".kubeAPIServer", c.KubeAPIServer}} {
				if f.v == "" {
					continue
				}
				if host, port, err := net.SplitHostPort(f.v); err != nil || host == "" {
					e.add(f.path, "write HOST:PORT, e.g. 10.0.0.10:2379 or api.example.com:6443", "%q is not HOST:PORT", f.v)
				} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
					e.add(f.path, "use a port in 1..65535", "bad port in %q", f.v)
				}
			}
			ranges = append(ranges, m.checkClusterPods(e, cp, c, podV4, podV6)...)
		}
	}
	checkOverlaps(e, ranges)
	return e.list
}

func (m *Mesh) checkPrefix(e *errs, path, s string, family, minBits, maxBits int) []rangeRef {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		e.add(path, "write a CIDR such as 100.64.0.0/10 or fd00::/48", "%q is not a valid CIDR", s)
		return nil
	}
	if (family == 4) != p.Addr().Is4() || p.Addr().Is4In6() {
		want := "IPv4"
		if family == 6 {
			want = "IPv6"
		}
		e.add(path, "write an "+want+" CIDR here", "%s is not an %s CIDR", s, want)
		return nil
	}
	if p.Masked() != p {
		e.add(path, fmt.Sprintf("write %s", p.Masked()), "%s has host bits set", s)
		return nil
	}
	if p.Bits() < minBits || p.Bits() > maxBits {
		e.add(path, fmt.Sprintf("use a prefix length between /%d and /%d", minBits, maxBits), "prefix length /%d is out of range", p.Bits())
		return nil
	}
	return []rangeRef{{path: path, prefix: p}}
}

func (m *Mesh) checkClusterPods(e *errs, cp string, c Cluster, podV4, podV6 []netip.Prefix) []rangeRef {
	var out []rangeRef
	seen := map[bool]bool{}
	for k, s := range c.PodCIDRs {
		path := fmt.Sprintf("%s.podCIDRs[%d]", cp, k)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			e.add(path, "write a CIDR such as 10.16.0.0/12", "%q is not a valid CIDR", s)
			continue
		}
		if p.Masked() != p {
			e.add(path, fmt.Sprintf("write %s", p.Masked()), "%s has host bits set", s)
			continue
		}
		is4 := p.Addr().Is4()
		if seen[is4] {
			e.add(path, "give at most one IPv4 and one IPv6 pod CIDR", "a second %s pod CIDR", familyName(is4))
			continue
		}
		seen[is4] = true
		supers := podV6
		total := 128
		if is4 {
			supers, total = podV4, 32
		}
		if len(supers) > 0 && !slices.ContainsFunc(supers, func(s netip.Prefix) bool { return s.Bits() <= p.Bits() && s.Contains(p.Addr()) }) {
			e.add(path, fmt.Sprintf("pick a range inside %s, or add its supernet to %s", joinPrefixes(supers), podField(is4)), "%s is outside every %s pod supernet", s, familyName(is4))
		}
		if c.MaxNodes >= 1 && c.MaxPodsPerNode >= 1 && c.MaxPodsPerNode <= MaxPodsPerNodeLimit {
			need := ClusterPodBits(c.MaxNodes, c.MaxPodsPerNode)
			if total-p.Bits() < need {
				e.add(path, fmt.Sprintf("use at least a /%d, or lower maxNodes or maxPodsPerNode", total-need),
					"%s holds %s addresses, but %d nodes × %d-address pod blocks need %s", s, pow2(total-p.Bits()), c.MaxNodes, 1<<PodBlockBits(c.MaxPodsPerNode), pow2(need))
			}
		}
		out = append(out, rangeRef{path: path, prefix: p})
	}
	return out
}

func podField(is4 bool) string {
	if is4 {
		return "addressing.podIPv4"
	}
	return "addressing.podIPv6"
}

func familyName(is4 bool) string {
	if is4 {
		return "ipv4"
	}
	return "ipv6"
}

func pow2(n int) string {
	if n >= 63 {
		return fmt.Sprintf("2^%d", n)
	}
	return Count(uint64(1) << n)
}

// Count formats a count with thousands separators.
func Count(n uint64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func checkUnderlay(e *errs, mtuPath, familyPath string, mtu int, family string) {
	if family != FamilyIPv4 && family != FamilyIPv6 {
		e.add(familyPath, "use ipv4 or ipv6", "unknown address family %q", family)
		return
	}
	checkMTU(e, mtuPath, mtu, family)
}

// checkMTU checks that an underlay MTU is a valid link MTU for its family.
func checkMTU(e *errs, path string, mtu int, family string) {
	low := 576
	if family == FamilyIPv6 {
		low = 1280
	}
	if mtu < low || mtu > 65535 {
		e.add(path, fmt.Sprintf("use an MTU between %d and 65535 for an %s underlay", low, family), "MTU %d is not a valid %s link MTU", mtu, family)
	}
}

func checkRoles(e *errs, path string, r Roles) {
	for _, x := range []struct {
		name string
		o    RoleUnderlay
	}{{"node", r.Node}, {"operator", r.Operator}, {"gateway", r.Gateway}} {
		p := path + "." + x.name
		fam := x.o.UnderlayFamily
		if fam != "" && fam != FamilyIPv4 && fam != FamilyIPv6 {
			e.add(p+".underlayFamily", "use ipv4 or ipv6", "unknown address family %q", fam)
			continue
		}
		if x.o.UnderlayMTU != 0 {
			if fam == "" {
				fam = FamilyIPv4
			}
			checkMTU(e, p+".underlayMTU", x.o.UnderlayMTU, fam)
		}
	}
}

var labelKey = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
var labelValue = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)

func checkLabels(e *errs, path string, labels map[string]string) {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !labelKey.MatchString(k) {
			e.add(path+"."+k, "use a Kubernetes-style label key", "invalid label key %q", k)
		} else if !labelValue.MatchString(labels[k]) {
			e.add(path+"."+k, "use at most 63 letters, digits, '-', '_' or '.'", "invalid label value %q", labels[k])
		}
	}
}

func checkOverlaps(e *errs, ranges []rangeRef) {
	for i := range ranges {
		for j := i + 1; j < len(ranges); j++ {
			a, b := ranges[i], ranges[j]
			if !a.prefix.Overlaps(b.prefix) {
				continue
			}
			// A cluster's pod CIDR inside a pod supernet is expected.
			if strings.Contains(b.path, ".podCIDRs[") && strings.HasPrefix(a.path, "addressing.pod") && a.prefix.Bits() <= b.prefix.Bits() {
				continue
			}
			e.add(b.path, fmt.Sprintf("pick a range that does not overlap %s", a.path), "%s overlaps %s (%s)", b.prefix, a.prefix, a.path)
		}
	}
}

func checkAttestation(e *errs, a *Attestation) {
	if a == nil {
		return
	}
	checkTrust(e, "attestation", a.EKRoots, a.EKAllowList, a.PCRs, a.Reference, "every TPM node would be refused")
	if c := a.Controller; c != nil {
		checkTrust(e, "attestation.controller", c.EKRoots, c.EKAllowList, c.PCRs, c.Reference, "agents would refuse every controller")
	}
	if d, err := time.ParseDuration(a.ReattestInterval); err != nil || d < 5*time.Second || d > 24*time.Hour {
		e.add("attestation.reattestInterval", "use a Go duration between 5s and 24h (e.g. 30s)", "invalid interval %q", a.ReattestInterval)
	}
	if a.OnFailure != OnFailureQuarantine && a.OnFailure != OnFailureDowngrade {
		e.add("attestation.onFailure", "use quarantine or downgrade", "unknown action %q", a.OnFailure)
	}
}

// checkTrust checks an EK trust and PCR policy (the nodes' or the
// controller's) at path at.
func checkTrust(e *errs, at string, roots, allow []string, pcrs []int, ref map[int][]string, refusedAll string) {
	for i, p := range roots {
		path := fmt.Sprintf("%s.ekRoots[%d]", at, i)
		blk, _ := pem.Decode([]byte(p))
		if blk == nil || blk.Type != "CERTIFICATE" {
			e.add(path, "paste the CA's PEM certificate (-----BEGIN CERTIFICATE-----...)", "not a PEM certificate")
			continue
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			e.add(path, "use the EK CA's certificate", "certificate does not parse: %v", err)
		}
	}
	for i, h := range allow {
		if b, err := hex.DecodeString(h); err != nil || len(b) != 32 {
			e.add(fmt.Sprintf("%s.ekAllowList[%d]", at, i), "give the SHA-256 (64 hex digits) of the EK's PKIX public key", "%q is not a SHA-256 digest", h)
		}
	}
	if len(roots) == 0 && len(allow) == 0 {
		e.add(at, "add ekRoots (your TPM vendors' EK CAs) or ekAllowList (vTPM EK digests)", "no EK can be trusted: %s", refusedAll)
	}
	seen := map[int]bool{}
	for i, p := range pcrs {
		path := fmt.Sprintf("%s.pcrs[%d]", at, i)
		if p < 0 || p > 23 {
			e.add(path, "use PCR indexes 0..23", "PCR %d does not exist", p)
		} else if seen[p] {
			e.add(path, "list each PCR once", "PCR %d is listed twice", p)
		}
		seen[p] = true
	}
	keys := make([]int, 0, len(ref))
	for k := range ref {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, pcr := range keys {
		path := fmt.Sprintf("%s.reference.%d", at, pcr)
		if !seen[pcr] {
			e.add(path, fmt.Sprintf("add %d to %s.pcrs", pcr, at), "PCR %d has reference values but is not quoted", pcr)
		}
		if len(ref[pcr]) == 0 {
			e.add(path, "list at least one accepted value, or remove the entry", "no accepted value")
		}
		for j, v := range ref[pcr] {
			if b, err := hex.DecodeString(v); err != nil || len(b) != 32 {
				e.add(fmt.Sprintf("%s[%d]", path, j), "write the SHA-256 PCR value as 64 hex digits", "%q is not a SHA-256 value", v)
			}
		}
	}
}

var roleNames = []string{"node", "operator", "gateway"}

func (m *Mesh) checkPolicy(e *errs) {
	p := m.Policy
	if p == nil {
		return
	}
	regions := map[string]bool{}
	clusters := map[string]bool{}
	for _, r := range m.Regions {
		regions[r.Name] = true
		for _, c := range r.Clusters {
			clusters[r.Name+"/"+c.Name] = true
		}
	}
	segs := map[string]Segment{}
	for i, s := range p.Segments {
		path := fmt.Sprintf("policy.segments[%d]", i)
		if !dnsLabel.MatchString(s.Name) {
			e.add(path+".name", "use lowercase letters, digits and '-'", "segment name %q is not a DNS label", s.Name)
		} else if _, dup := segs[s.Name]; dup {
			e.add(path+".name", "give every segment a unique name", "segment %q is defined twice", s.Name)
		}
		segs[s.Name] = s
		for j, r := range s.Match.Regions {
			if !regions[r] {
				e.add(fmt.Sprintf("%s.match.regions[%d]", path, j), "name a region of this spec", "no region %q: the selector matches nothing there", r)
			}
		}
		for j, c := range s.Match.Clusters {
			if !clusters[c] {
				e.add(fmt.Sprintf("%s.match.clusters[%d]", path, j), "write REGION/CLUSTER of a cluster of this spec", "no cluster %q: the selector matches nothing there", c)
			}
		}
		for j, r := range s.Match.Roles {
			if !slices.Contains(roleNames, r) {
				e.add(fmt.Sprintf("%s.match.roles[%d]", path, j), "use node, operator or gateway", "unknown role %q", r)
			}
		}
		if len(s.Match.Clusters) > 0 && len(s.Match.Roles) > 0 && !slices.ContainsFunc(s.Match.Roles, func(r string) bool { return r != "gateway" }) {
			e.add(path+".match", "gateways belong to no cluster: drop the cluster criterion or add the node role", "the selector matches nothing (gateways in clusters)")
		}
		for j, c := range s.Match.Classes {
			if c != "strong" && c != "weak" {
				e.add(fmt.Sprintf("%s.match.classes[%d]", path, j), "use strong or weak", "unknown class %q", c)
			} else if c == "weak" && s.Sensitive {
				e.add(fmt.Sprintf("%s.match.classes[%d]", path, j), "remove weak: sensitive segments hold strong nodes only", "a sensitive segment never holds weak nodes")
			}
		}
		checkLabels(e, path+".match.labels", s.Match.Labels)
		checkLabels(e, path+".podLabels", s.PodLabels)
		if s.Clients && s.Sensitive {
			e.add(path+".clients", "keep external clients out of sensitive segments, or make the segment not sensitive", "clients are not attested: they cannot be members of a sensitive segment")
		}
	}
	nClients := 0
	for i, s := range p.Segments {
		if s.Clients {
			if nClients++; nClients == MaxClientSegments+1 {
				e.add(fmt.Sprintf("policy.segments[%d].clients", i), fmt.Sprintf("put external clients in at most %d segments", MaxClientSegments), "too many clients segments: each region's clients range has %d blocks", MaxClientSegments)
			}
		}
	}
	names := map[string]bool{}
	seen := map[string]int{}
	for i, r := range p.Rules {
		path := fmt.Sprintf("policy.rules[%d]", i)
		if !dnsLabel.MatchString(r.Name) {
			e.add(path+".name", "use lowercase letters, digits and '-'", "rule name %q is not a DNS label", r.Name)
		} else if names[r.Name] {
			e.add(path+".name", "give every rule a unique name", "rule %q is defined twice", r.Name)
		}
		names[r.Name] = true
		from, okFrom := segs[r.From]
		to, okTo := segs[r.To]
		if !okFrom {
			e.add(path+".from", "name a segment of policy.segments", "unknown segment %q", r.From)
		}
		if !okTo {
			e.add(path+".to", "name a segment of policy.segments", "unknown segment %q", r.To)
		}
		if okFrom && okTo && to.Sensitive && len(from.Match.Classes) == 1 && from.Match.Classes[0] == "weak" {
			e.add(path, "remove the rule: weak nodes never reach a sensitive segment", "rule lets the weak-only segment %q into the sensitive segment %q: it can never apply", r.From, r.To)
		}
		if len(r.Ports) == 0 {
			e.add(path+".ports", "list the ports (tcp/443, udp/53, icmp) or any", "a rule without ports allows nothing")
		}
		var canon []string
		for j, ps := range r.Ports {
			pt, err := ParsePort(ps)
			if err != nil {
				e.add(fmt.Sprintf("%s.ports[%d]", path, j), "write tcp/PORT, udp/PORT, tcp/FROM-TO, icmp or any", "%v", err)
				continue
			}
			canon = append(canon, pt.String())
		}
		slices.Sort(canon)
		key := r.From + ">" + r.To + ">" + strings.Join(canon, ",")
		if j, dup := seen[key]; dup {
			e.add(path, fmt.Sprintf("remove it: policy.rules[%d] already allows the same", j), "duplicate rule")
		}
		seen[key] = i
	}
}

// CheckLabels checks Kubernetes-style labels (node labels from agents).
func CheckLabels(labels map[string]string) error {
	e := &errs{}
	checkLabels(e, "labels", labels)
	return e.list.Err()
}
