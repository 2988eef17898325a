// Package lab builds a StateMesh on one Linux host out of network
// namespaces: a switch per region (the region's underlay), a WAN switch
// between regions' gateways (with tc netem delay and a configurable MTU), a
// management network to the controller, hosts (nodes, operators, gateways),
// and a pod namespace behind every node. It runs a real controller and real
// agents as separate processes and checks the mesh with real packets. It is
// both the demo (statemesh lab up/check/down) and the e2e test bed.
//
// Every host is a network namespace plus a private mount namespace held
// open by a "holder" process, so that each host's /var/run/wireguard is its
// own (wireguard-go's UAPI sockets would collide otherwise) and `wg show`
// run through `statemesh lab exec HOST -- wg show` sees that host only.
// Everything the lab creates is recorded in a state file as it is created,
// so `lab down` removes it all, and nothing else, even after a crash.
package lab

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config describes a lab.
type Config struct {
	Regions  int `json:"regions" yaml:"regions"`
	Clusters int `json:"clusters" yaml:"clusters"` // per region
	Nodes    int `json:"nodes" yaml:"nodes"`       // per cluster
	Gateways int `json:"gateways" yaml:"gateways"` // per region
	// WANDelay is the one-way delay between regions (netem).
	WANDelay time.Duration `json:"wanDelay" yaml:"wanDelay"`
	// WANMTU is the MTU of the WAN between gateways.
	WANMTU int `json:"wanMTU" yaml:"wanMTU"`
	// UnderlayMTU is the MTU of each region's underlay.
	UnderlayMTU int `json:"underlayMTU" yaml:"underlayMTU"`
	// Dir holds the state file, logs and data dirs.
	Dir string `json:"dir" yaml:"dir"`
	// Binary is the statemesh executable to run (default: this one).
	Binary string `json:"binary" yaml:"binary"`
	// Pods creates a pod namespace behind every node.
	Pods bool `json:"pods" yaml:"pods"`
	// GatewayTimeout is the controller's gateway heartbeat timeout.
	GatewayTimeout time.Duration `json:"gatewayTimeout" yaml:"gatewayTimeout"`
	// Attestation gives every host a software TPM (swtpm) with an EK
	// certificate from the lab's own CA, and the mesh an attestation policy
	// accepting that CA: hosts come up strong.
	Attestation bool `json:"attestation" yaml:"attestation"`
	// WeakNodes is how many nodes of each cluster run without a TPM (their
	// clusters admit them as weak).
	WeakNodes int `json:"weakNodes" yaml:"weakNodes"`
	// ReattestInterval for the lab's policy.
	ReattestInterval time.Duration `json:"reattestInterval" yaml:"reattestInterval"`
	// DriftInterval is the agents' --drift-interval: how often each checks
	// its nftables table (a netlink read of the ruleset generation; the
	// nft binary runs only after a change). Default: 1 s
	// (the agent's default) up to BigLabRegions regions, 10 s above.
	DriftInterval time.Duration `json:"driftInterval,omitempty" yaml:"driftInterval"`
	// ProbeInterval is the agents' --probe-interval: how often each
	// measures RTT, loss and path MTU to the gateways (a gateway: to every
	// other gateway, 4 echoes each). Default: 3 s up to BigLabRegions
	// regions (lab tests see path results soon), 30 s (the agent's
	// default) above: at 3 s a 20-region lab's 40 gateways sent 52 echoes a
	// second each, most of their WireGuard traffic.
	ProbeInterval time.Duration `json:"probeInterval,omitempty" yaml:"probeInterval"`
	// GoMaxProcs, when above 0, is the GOMAXPROCS of every agent and of
	// its wireguard-go daemon (inherited). Default: the Go runtime's (the
	// machine's cores) up to BigLabRegions regions, 1 above: on a 2-core
	// machine a large lab is a hundred Go processes, and each one's idle
	// Ps spinning and waking (futex, context switches) cost more than
	// their parallelism gives.
	GoMaxProcs int `json:"goMaxProcs,omitempty" yaml:"goMaxProcs"`
	// Policy adds the lab's segmentation (docs/lab.md): frontend (every
	// c1), backend (every c2), vault (sensitive: nodes labelled app=vault,
	// the c2 nodes; weak ones are never members), rules frontend→backend
	// (tcp/7000, icmp) and backend→vault (tcp/7000).
	Policy bool `json:"policy" yaml:"policy"`
	// Clients is how many external clients (operators' laptops in the ops
	// segment, region eu-central) come up with wg-quick; needs Policy.
	Clients int `json:"clients" yaml:"clients"`
	// UnderlayAllow are ports the agents' firewalls leave open on the
	// underlay (benchmarks: iperf3, a hand-made WireGuard).
	UnderlayAllow []string `json:"underlayAllow,omitempty" yaml:"underlayAllow"`
	// BGP runs the mesh in BIRD mode: backbone links between gateways,
	// BGP with BFD (BFDInterval × 3) on each.
	BGP         bool          `json:"bgp,omitempty" yaml:"bgp"`
	BFDInterval time.Duration `json:"bfdInterval,omitempty" yaml:"bfdInterval"`
	// PeersPerRegion is the spec's routing.backbone.peersPerRegion: how
	// many gateways of each other region a gateway links to (0: the
	// spec's default, 2).
	PeersPerRegion int `json:"peersPerRegion,omitempty" yaml:"peersPerRegion"`
	// PodFamily is what the pods speak: ipv4 (default), ipv6 (IPv6 pod
	// ranges; nodes get an IPv6 overlay address beside their IPv4 one) or
	// dual (both pod ranges, both overlay addresses).
	PodFamily string `json:"podFamily,omitempty" yaml:"podFamily"`
	// UnderlayFamily is the family of the WAN and the regions' underlays:
	// ipv4 (default) or ipv6 (every underlay and WAN address is IPv6, so
	// WireGuard endpoints are [addr]:port). The management network to the
	// controller stays IPv4 either way.
	UnderlayFamily string `json:"underlayFamily,omitempty" yaml:"underlayFamily"`
	// Dataplane is the spec's dataplane.firewall: ebpf (the XDP guard on
	// every host's underlay interfaces and the eBPF firewall on sm0, in
	// front of nftables), nftables or auto; empty: the spec says nothing
	// and the agents run nftables (docs/ebpf.md).
	Dataplane string `json:"dataplane,omitempty" yaml:"dataplane"`
}

// Families.
const (
	FamilyIPv4 = "ipv4"
	FamilyIPv6 = "ipv6"
	FamilyDual = "dual"
)

// Pods4 reports whether the pods have IPv4 addresses.
func (c *Config) Pods4() bool { return c.PodFamily != FamilyIPv6 }

// Pods6 reports whether the pods have IPv6 addresses (and the nodes IPv6
// overlay addresses).
func (c *Config) Pods6() bool { return c.PodFamily == FamilyIPv6 || c.PodFamily == FamilyDual }

// Underlay6 reports whether the underlays and the WAN are IPv6.
func (c *Config) Underlay6() bool { return c.UnderlayFamily == FamilyIPv6 }

// Families are the address families the mesh carries between nodes
// (IPv4 always: every node has an IPv4 overlay address).
func (c *Config) Families() []string {
	if c.Pods6() {
		return []string{FamilyIPv4, FamilyIPv6}
	}
	return []string{FamilyIPv4}
}

// ParseConfig reads a lab description (`statemesh lab up -f`, the lab
// files in examples/) over cfg: the fields it names replace cfg's; an
// unknown field is an error.
func ParseConfig(data []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	return dec.Decode(cfg)
}

// Defaults.
const (
	// Overlay6Range and Pod6Range are the lab's IPv6 overlay and pod
	// supernets (--pods ipv6|dual).
	Overlay6Range = "fd7a:115c::/48"
	Pod6Range     = "fd00:10::/48"

	DefaultDir    = "/run/statemesh-lab"
	ControllerIP  = "10.255.0.1"
	ControllerURL = "https://10.255.0.1:7443"
	mgmtBridge    = "smlmgmt0"
	nsPrefix      = "sml-"
	servePort     = 7000
)

// SetDefaults fills unset fields.
// BigLabRegions is the size above which the lab trims what every host
// costs: agents check their nftables table every 10 s, not every second
// (an nft process per check: 30 a second in a 10-region lab, a fifth of
// the 2 cores while it came up), measure their paths every 30 s, not
// every 3 s, agents and their wireguard-go run with
// GOMAXPROCS 1, and BFD (BIRD mode) runs at 200 ms, not 100 ms.
const BigLabRegions = 4

func (c *Config) SetDefaults() {
	if c.Regions == 0 {
		c.Regions = 2
	}
	if c.Clusters == 0 {
		c.Clusters = 2
	}
	if c.Nodes == 0 {
		c.Nodes = 2
	}
	if c.Gateways == 0 {
		c.Gateways = 2
	}
	if c.WANMTU == 0 {
		c.WANMTU = 1500
	}
	if c.UnderlayMTU == 0 {
		c.UnderlayMTU = 1500
	}
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if c.GatewayTimeout == 0 {
		c.GatewayTimeout = 2 * time.Second
	}
	if c.ReattestInterval == 0 {
		c.ReattestInterval = 5 * time.Second
	}
	if c.DriftInterval == 0 {
		c.DriftInterval = time.Second
		if c.Regions > BigLabRegions {
			c.DriftInterval = 10 * time.Second
		}
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = 3 * time.Second
		if c.Regions > BigLabRegions {
			c.ProbeInterval = 30 * time.Second
		}
	}
	if c.GoMaxProcs == 0 && c.Regions > BigLabRegions {
		c.GoMaxProcs = 1
	}
	if c.BGP && c.BFDInterval == 0 && c.Regions > BigLabRegions {
		// A third fewer BFD packets than at 100 ms, detection in 0.6 s:
		// the 10-region lab comes up and fails over in 0.95 s (median);
		// at 100 ms it does not converge on 2 cores (BENCHMARKS.md).
		c.BFDInterval = 200 * time.Millisecond
	}
	if c.PodFamily == "" {
		c.PodFamily = FamilyIPv4
	}
	if c.UnderlayFamily == "" {
		c.UnderlayFamily = FamilyIPv4
	}
}

// Validate checks the sizes.
func (c *Config) Validate() error {
	switch {
	case c.Regions < 1 || c.Regions > len(regionNames):
		return fmt.Errorf("regions: 1..%d", len(regionNames))
	case c.Clusters < 1 || c.Clusters > 9:
		return fmt.Errorf("clusters: 1..9 per region")
	case c.Nodes < 1 || c.Nodes > 20:
		return fmt.Errorf("nodes: 1..20 per cluster")
	case c.Gateways < 2 || c.Gateways > 9:
		return fmt.Errorf("gateways: 2..9 per region (HA needs 2)")
	case c.PeersPerRegion < 0 || c.PeersPerRegion > 32:
		return fmt.Errorf("peersPerRegion: 1..32 (0: the spec's default)")
	case c.PeersPerRegion > 0 && !c.BGP:
		return fmt.Errorf("peersPerRegion needs bgp (it shapes the BIRD-mode backbone)")
	case c.WANMTU < 1280 || c.UnderlayMTU < 1280:
		return fmt.Errorf("MTUs must be at least 1280")
	case c.WeakNodes < 0 || c.WeakNodes > c.Nodes:
		return fmt.Errorf("weakNodes: 0..nodes per cluster")
	case c.WeakNodes > 0 && !c.Attestation:
		return fmt.Errorf("weakNodes needs attestation (without it every node is weak)")
	case c.Clients < 0 || c.Clients > 20:
		return fmt.Errorf("clients: 0..20")
	case c.Clients > 0 && !c.Policy:
		return fmt.Errorf("clients need the policy (they belong to its ops segment)")
	case c.PodFamily != FamilyIPv4 && c.PodFamily != FamilyIPv6 && c.PodFamily != FamilyDual:
		return fmt.Errorf("pods: ipv4, ipv6 or dual (got %q)", c.PodFamily)
	case c.UnderlayFamily != FamilyIPv4 && c.UnderlayFamily != FamilyIPv6:
		return fmt.Errorf("underlay: ipv4 or ipv6 (got %q)", c.UnderlayFamily)
	case c.Dataplane != "" && c.Dataplane != "ebpf" && c.Dataplane != "nftables" && c.Dataplane != "auto":
		return fmt.Errorf("dataplane: ebpf, nftables or auto (got %q)", c.Dataplane)
	}
	return nil
}

// regionNames are the lab's regions, in order (--regions N takes the
// first N).
var regionNames = []string{"eu-central", "us-east", "ap-south", "eu-north", "us-west", "sa-east",
	"eu-west", "us-central", "ap-east", "ap-north", "me-central", "af-south", "ca-central", "eu-south",
	"us-south", "ap-southeast", "au-east", "sa-west", "mx-central", "in-west"}

// Host is one lab machine.
type Host struct {
	Name    string `json:"name"`
	Region  string `json:"region"`
	Cluster string `json:"cluster,omitempty"`
	Role    string `json:"role"`
	// Index is the host's number within its region (gateways 1.., nodes 20..).
	Index     int        `json:"index"`
	RegionIdx int        `json:"regionIdx"`
	Underlay  netip.Addr `json:"underlay"`
	WAN       netip.Addr `json:"wan,omitzero"`
	Mgmt      netip.Addr `json:"mgmt"`
	// Overlay and PodBlock are filled in after enrollment.
	Overlay  netip.Addr   `json:"overlay,omitzero"`
	PodBlock netip.Prefix `json:"podBlock,omitzero"`
	PodIP    netip.Addr   `json:"podIP,omitzero"`
	// The IPv6 ones (--pods ipv6|dual).
	Overlay6  netip.Addr   `json:"overlay6,omitzero"`
	PodBlock6 netip.Prefix `json:"podBlock6,omitzero"`
	PodIP6    netip.Addr   `json:"podIP6,omitzero"`
	// Removed is set once the host was removed from the mesh: checks
	// leave it out.
	Removed bool `json:"removed,omitempty"`
	// TPM is the host's software TPM ("" for none).
	TPM string `json:"tpm,omitempty"`
	// Weak hosts run without a TPM.
	Weak bool `json:"weak,omitempty"`
	// Labels are the host's node labels.
	Labels map[string]string `json:"labels,omitempty"`
}

// NS is the host's network namespace name.
func (h *Host) NS() string { return nsPrefix + h.Name }

// PodNS is the namespace of the host's pod.
func (h *Host) PodNS() string { return nsPrefix + h.Name + "-pod" }

func regionSwitch(region string) string { return nsPrefix + "sw-" + region }

const wanSwitch = nsPrefix + "wan"

// PodAddr is the address of the host's pod the lab's streams and tests
// use: its IPv4 address, or its IPv6 one when the pods are IPv6 only.
func (h *Host) PodAddr() netip.Addr {
	if h.PodIP.IsValid() {
		return h.PodIP
	}
	return h.PodIP6
}

// The lab's IPv6 underlay mirrors the IPv4 one, the IPv4 address's last
// numbers written as the last groups (172.16.1.21 is fd00:172:16:1::21,
// 203.0.113.12 is 2001:db8:113::12): a reader maps one to the other.
const underlay6Bits, wan6Bits = 64, 64

func underlayAddr(v6 bool, region, host int) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:172:16:%d::%d", region, host))
	}
	return netip.AddrFrom4([4]byte{172, 16, byte(region), byte(host)})
}

func wanAddr(v6 bool, n int) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:113::%d", n))
	}
	return netip.AddrFrom4([4]byte{203, 0, 113, byte(n)})
}

// withBits is addr with the lab's prefix length of its network.
func withBits(a netip.Addr) string {
	if a.Is6() {
		return fmt.Sprintf("%s/%d", a, underlay6Bits)
	}
	return a.String() + "/24"
}

// Hosts lays out the lab's machines.
func (c *Config) Hosts() []*Host {
	v6 := c.Underlay6()
	var hosts []*Host
	for ri := range c.Regions {
		region := regionNames[ri]
		r := ri + 1
		for g := 1; g <= c.Gateways; g++ {
			hosts = append(hosts, &Host{
				Name: fmt.Sprintf("%s-gw%d", region, g), Region: region, Role: "gateway", Index: g, RegionIdx: r,
				Underlay: underlayAddr(v6, r, g),
				WAN:      wanAddr(v6, r*10+g),
				Mgmt:     netip.AddrFrom4([4]byte{10, 255, byte(r), byte(g)}),
			})
		}
		idx := 20
		for cl := 1; cl <= c.Clusters; cl++ {
			for n := 1; n <= c.Nodes; n++ {
				hosts = append(hosts, &Host{
					Name: fmt.Sprintf("%s-c%d-n%d", region, cl, n), Region: region, Cluster: fmt.Sprintf("c%d", cl), Role: "node",
					Index: idx, RegionIdx: r, Weak: n > c.Nodes-c.WeakNodes, Labels: labId(cl),
					Underlay: underlayAddr(v6, r, idx),
					Mgmt:     netip.AddrFrom4([4]byte{10, 255, byte(r), byte(idx)}),
				})
				idx++
			}
		}
	}
	return hosts
}

// labId gives the nodes of cluster 2 the vault label (the policy's
// sensitive segment selects them; weak ones stay out).
func labId(cluster int) map[string]string {
	if cluster == 2 {
		return map[string]string{"app": "vault"}
	}
	return map[string]string{"app": "web"}
}

// LabPolicy is the policy section of the lab's spec.
const LabPolicy = `policy:
  segments:
    - name: frontend
      match: {labels: {app: web}}
    - name: backend
      match: {labels: {app: vault}}
    - name: vault
      match: {labels: {app: vault}}
      sensitive: true
    - name: ops
      clients: true
  rules:
    - {name: frontend-to-backend, from: frontend, to: backend, ports: ["tcp/7000", icmp]}
    - {name: backend-to-vault, from: backend, to: vault, ports: ["tcp/7000"]}
    - {name: ops-to-frontend, from: ops, to: frontend, ports: [any]}
`

// trustYAML renders an attestation trust policy at indent: the lab CA's
// certificates as EK roots, PCRs 0-7 quoted, all zero (swtpm boots
// nothing).
func trustYAML(indent string, ekRoots []string) string {
	s := indent + "ekRoots:\n"
	for _, r := range ekRoots {
		s += indent + "  - |\n"
		for _, line := range strings.Split(strings.TrimSpace(r), "\n") {
			s += indent + "    " + line + "\n"
		}
	}
	s += indent + "pcrs: [0, 1, 2, 3, 4, 5, 6, 7]\n" + indent + "reference:\n"
	for pcr := range 8 {
		s += fmt.Sprintf("%s  %d: [%q]\n", indent, pcr, strings.Repeat("0", 64))
	}
	return s
}

// Spec renders the lab's mesh spec; ekRoots are the PEM certificates of the
// lab's EK CA when attestation is on.
func (c *Config) Spec(ekRoots ...string) string {
	s := "apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: lab\naddressing:\n  overlayIPv4: 100.64.0.0/10\n"
	if c.Pods6() {
		s += "  overlayIPv6: " + Overlay6Range + "\n"
	}
	if c.Pods4() {
		s += "  podIPv4: [10.0.0.0/8]\n"
	}
	if c.Pods6() {
		s += "  podIPv6: [" + Pod6Range + "]\n"
	}
	fam := ""
	if c.Underlay6() {
		fam = "  family: ipv6\n"
	}
	s += fmt.Sprintf("underlay:\n  mtu: %d\n%s  wan:\n    mtu: %d\n%sregions:\n", c.UnderlayMTU, fam, c.WANMTU, strings.ReplaceAll(fam, "  ", "    "))
	for ri := range c.Regions {
		s += fmt.Sprintf("  - name: %s\n    gateways: %d\n", regionNames[ri], c.Gateways)
		if c.BGP && ri == 0 {
			// The lab's operator router (router.go).
			s += fmt.Sprintf("    bgp:\n      externalPeers:\n        - {name: core-1, address: %s, asn: %d, bfd: true}\n", c.RouterAddr(), RouterASN)
		}
		s += "    clusters:\n"
		for cl := 1; cl <= c.Clusters; cl++ {
			weak := ""
			if c.WeakNodes > 0 {
				weak = ", admitWithoutTPM: true"
			}
			s += fmt.Sprintf("      - {name: c%d, maxNodes: 64, maxPodsPerNode: 16%s}\n", cl, weak)
		}
	}
	if c.Policy {
		s += LabPolicy
	}
	if c.BGP {
		iv := c.BFDInterval
		if iv == 0 {
			iv = 100 * time.Millisecond
		}
		s += fmt.Sprintf("routing:\n  bgp: true\n  bfd: {interval: %s, multiplier: 3}\n", iv)
		if c.PeersPerRegion > 0 {
			s += fmt.Sprintf("  backbone: {peersPerRegion: %d}\n", c.PeersPerRegion)
		}
	}
	if c.Dataplane != "" {
		s += "dataplane:\n  firewall: " + c.Dataplane + "\n"
	}
	if c.Attestation {
		s += "attestation:\n" + trustYAML("  ", ekRoots)
		s += fmt.Sprintf("  reattestInterval: %s\n", c.ReattestInterval)
		// The controller's swtpm has its EK certificate from the same CA.
		s += "  controller:\n" + trustYAML("    ", ekRoots)
	}
	return s
}
