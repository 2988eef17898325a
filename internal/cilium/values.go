package cilium

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/mtu"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
)

// Values are the Helm values of Cilium's chart for one cluster (only the
// keys StateMesh sets; everything else keeps the chart's defaults).
type Values struct {
	Cluster     ClusterValues     `yaml:"cluster"`
	Clustermesh ClustermeshValues `yaml:"clustermesh"`
	IPv4        Enabled           `yaml:"ipv4"`
	IPv6        Enabled           `yaml:"ipv6"`
	IPAM        IPAMValues        `yaml:"ipam"`

	RoutingMode           string `yaml:"routingMode"`
	TunnelProtocol        string `yaml:"tunnelProtocol,omitempty"`
	IPv4NativeRoutingCIDR string `yaml:"ipv4NativeRoutingCIDR,omitempty"`
	IPv6NativeRoutingCIDR string `yaml:"ipv6NativeRoutingCIDR,omitempty"`
	// AutoDirectNodeRoutes stays off: StateMesh routes pod blocks over the
	// overlay.
	AutoDirectNodeRoutes bool `yaml:"autoDirectNodeRoutes"`

	KubeProxyReplacement bool      `yaml:"kubeProxyReplacement"`
	K8sServiceHost       string    `yaml:"k8sServiceHost,omitempty"`
	K8sServicePort       string    `yaml:"k8sServicePort,omitempty"`
	BPF                  BPFValues `yaml:"bpf"`
	EnableIPv4Masquerade *bool     `yaml:"enableIPv4Masquerade,omitempty"`
	EnableIPv6Masquerade *bool     `yaml:"enableIPv6Masquerade,omitempty"`
	MTU                  int       `yaml:"MTU"`
	// NodeSelectorLabels gives nodes identities from their labels, so
	// policies can name weak nodes (statemesh.dev/class).
	NodeSelectorLabels bool       `yaml:"nodeSelectorLabels"`
	Encryption         Encryption `yaml:"encryption"`
}

// ClusterValues names the cluster.
type ClusterValues struct {
	Name string `yaml:"name"`
	ID   int    `yaml:"id"`
}

// ClustermeshValues connects the cluster to its peers.
type ClustermeshValues struct {
	UseAPIServer         bool              `yaml:"useAPIServer"`
	MaxConnectedClusters int               `yaml:"maxConnectedClusters,omitempty"`
	Config               ClustermeshConfig `yaml:"config"`
}

// ClustermeshConfig lists the peer clusters.
type ClustermeshConfig struct {
	Enabled  bool          `yaml:"enabled"`
	Domain   string        `yaml:"domain"`
	Clusters []MeshCluster `yaml:"clusters"`
}

// MeshCluster is a peer cluster's clustermesh-apiserver.
type MeshCluster struct {
	Name    string   `yaml:"name"`
	Address string   `yaml:"address,omitempty"`
	IPs     []string `yaml:"ips,omitempty"`
	Port    int      `yaml:"port"`
}

// Enabled toggles an address family.
type Enabled struct {
	Enabled bool `yaml:"enabled"`
}

// IPAMValues: cluster-pool mode with the planned CIDRs.
type IPAMValues struct {
	Mode     string       `yaml:"mode"`
	Operator IPAMOperator `yaml:"operator"`
}

// IPAMOperator holds the cluster's pod CIDRs and node mask sizes.
type IPAMOperator struct {
	ClusterPoolIPv4PodCIDRList []string `yaml:"clusterPoolIPv4PodCIDRList"`
	ClusterPoolIPv4MaskSize    int      `yaml:"clusterPoolIPv4MaskSize,omitempty"`
	ClusterPoolIPv6PodCIDRList []string `yaml:"clusterPoolIPv6PodCIDRList"`
	ClusterPoolIPv6MaskSize    int      `yaml:"clusterPoolIPv6MaskSize,omitempty"`
}

// BPFValues: eBPF masquerading.
type BPFValues struct {
	Masquerade bool `yaml:"masquerade"`
}

// Encryption is Cilium's own (transparent) encryption.
type Encryption struct {
	Enabled bool   `yaml:"enabled"`
	Type    string `yaml:"type,omitempty"`
}

// ClusterMeshPort is the clustermesh-apiserver's default port.
const ClusterMeshPort = 2379

// NodeRoleLabel is the Kubernetes node label naming the StateMesh role
// of a node (node, operator, gateway); NodeClassLabel its class.
const (
	NodeRoleLabel    = "statemesh.dev/role"
	NodeClassLabel   = "statemesh.dev/class"
	NodeRegionLabel  = "statemesh.dev/region"
	NodeClusterLabel = "statemesh.dev/cluster"
)

// RenderedValues is one cluster's values with what went into them.
type RenderedValues struct {
	Cluster string // REGION/CLUSTER
	Values  Values
	// PodMTU is what pods get: MTU minus Cilium's own overheads; equals the
	// plan's pod MTU.
	PodMTU int
	// OperatorMTU is the MTU operator nodes need (a CiliumNodeConfig),
	// when it differs.
	OperatorMTU int
	Peers       []string
	notes       []string
}

// ClusterValuesFor renders the Helm values of one cluster (REGION/CLUSTER).
func ClusterValuesFor(m *spec.Mesh, p *plan.Plan, key string) (RenderedValues, error) {
	region, name, ok := strings.Cut(key, "/")
	if !ok {
		return RenderedValues{}, fmt.Errorf("cluster %q: write REGION/CLUSTER", key)
	}
	pc, ok := p.Cluster(region, name)
	if !ok {
		return RenderedValues{}, fmt.Errorf("no cluster %s in the plan (statemesh plan lists them)", key)
	}
	pr, _ := p.Region(region)
	sc := specCluster(m, region, name)
	node, ok := pr.Role(netmap.RoleNode)
	if !ok {
		return RenderedValues{}, fmt.Errorf("the plan has no node MTU for region %s", region)
	}
	v := Values{
		Cluster:            ClusterValues{Name: pc.CiliumName, ID: pc.ClusterID},
		IPv4:               Enabled{pc.PodIPv4.IsValid()},
		IPv6:               Enabled{pc.PodIPv6.IsValid()},
		IPAM:               IPAMValues{Mode: "cluster-pool"},
		BPF:                BPFValues{Masquerade: true},
		NodeSelectorLabels: true,
		Encryption:         Encryption{Enabled: m.Cilium.WireGuard},
	}
	if m.Cilium.WireGuard {
		v.Encryption.Type = "wireguard"
	}
	if m.Cilium.MaxConnectedClusters > 255 {
		v.Clustermesh.MaxConnectedClusters = m.Cilium.MaxConnectedClusters
	}
	v.IPAM.Operator.ClusterPoolIPv4PodCIDRList = []string{}
	v.IPAM.Operator.ClusterPoolIPv6PodCIDRList = []string{}
	t := true
	if pc.PodIPv4.IsValid() {
		v.IPAM.Operator.ClusterPoolIPv4PodCIDRList = []string{pc.PodIPv4.String()}
		v.IPAM.Operator.ClusterPoolIPv4MaskSize = pc.NodeMaskIPv4
		v.EnableIPv4Masquerade = &t
	}
	if pc.PodIPv6.IsValid() {
		v.IPAM.Operator.ClusterPoolIPv6PodCIDRList = []string{pc.PodIPv6.String()}
		v.IPAM.Operator.ClusterPoolIPv6MaskSize = pc.NodeMaskIPv6
		v.EnableIPv6Masquerade = &t
	}
	rv := RenderedValues{Cluster: key}
	switch m.Cilium.RoutingMode {
	case spec.RoutingNative:
		v.RoutingMode = "native"
		// Pods of every cluster are reached without masquerading: the
		// native-routing CIDR is the mesh's pod supernet of each family.
		if len(p.Addressing.PodIPv4) > 0 && pc.PodIPv4.IsValid() {
			v.IPv4NativeRoutingCIDR = covering(p.Addressing.PodIPv4).String()
		}
		if len(p.Addressing.PodIPv6) > 0 && pc.PodIPv6.IsValid() {
			v.IPv6NativeRoutingCIDR = covering(p.Addressing.PodIPv6).String()
		}
	default:
		v.RoutingMode = "tunnel"
		v.TunnelProtocol = m.Cilium.RoutingMode
		rv.notes = append(rv.notes, fmt.Sprintf("cilium.routingMode is %s: Cilium encapsulates inside the overlay (%d bytes less for pods)", m.Cilium.RoutingMode,
			mtu.EncapOverhead(m.Cilium.RoutingMode, mtu.IPv4, m.Cilium.GeneveOptionBytes)))
	}
	// Cilium's MTU is the device's (the StateMesh interface); Cilium
	// subtracts its own encapsulation (50 bytes) and encryption (95) for the
	// pods' routes, but not Geneve options: the value leaves room for them,
	// so that Cilium's pods get exactly the plan's pod MTU (the Cilium
	// module's pkg/mtu checks it in internal/cilium/ciliumcheck).
	v.MTU = CiliumMTU(m, node.WireGuardMTU)
	rv.PodMTU = pc.PodMTU
	if op, ok := pr.Role(netmap.RoleOperator); ok && op.WireGuardMTU != node.WireGuardMTU {
		rv.OperatorMTU = CiliumMTU(m, op.WireGuardMTU)
	}
	// Without kube-proxy, Cilium must reach the API server by address: only
	// clusters whose kubeAPIServer the spec gives get the replacement.
	if m.Cilium.KubeProxyReplacement == nil || *m.Cilium.KubeProxyReplacement {
		if sc != nil && sc.KubeAPIServer != "" {
			host, port, _ := net.SplitHostPort(sc.KubeAPIServer)
			v.KubeProxyReplacement, v.K8sServiceHost, v.K8sServicePort = true, host, port
		} else {
			rv.notes = append(rv.notes, "kube-proxy replacement is off: it needs the API server's address (regions[].clusters[].kubeAPIServer)")
		}
	}
	peers, err := MeshPeers(m, p, key)
	if err != nil {
		return RenderedValues{}, err
	}
	rv.Peers = peers
	v.Clustermesh.Config.Domain = m.Cilium.ClustermeshDomain
	v.Clustermesh.Config.Clusters = []MeshCluster{}
	if len(peers) > 0 {
		v.Clustermesh.UseAPIServer = true
		v.Clustermesh.Config.Enabled = true
		for _, pk := range peers {
			pr, pn, _ := strings.Cut(pk, "/")
			ppc, _ := p.Cluster(pr, pn)
			mc := MeshCluster{Name: ppc.CiliumName, Address: ppc.CiliumName + "." + m.Cilium.ClustermeshDomain, Port: ClusterMeshPort}
			if psc := specCluster(m, pr, pn); psc != nil && psc.ClustermeshEndpoint != "" {
				host, port, _ := net.SplitHostPort(psc.ClustermeshEndpoint)
				mc.Port, _ = strconv.Atoi(port)
				if ip := net.ParseIP(host); ip != nil {
					mc.Address, mc.IPs = "", []string{host}
				} else {
					mc.Address = host
				}
			}
			v.Clustermesh.Config.Clusters = append(v.Clustermesh.Config.Clusters, mc)
		}
	}
	rv.Values = v
	return rv, nil
}

// CiliumMTU is Cilium's MTU value for nodes whose StateMesh interface has
// the given MTU: the interface's, less the Geneve options Cilium does not
// count itself.
func CiliumMTU(m *spec.Mesh, wireguardMTU int) int {
	if m.Cilium.RoutingMode == spec.RoutingGeneve {
		return wireguardMTU - m.Cilium.GeneveOptionBytes
	}
	return wireguardMTU
}

// covering returns the first supernet (a mesh has one per family in
// practice; several are refused by the native-routing CIDR anyway).
func covering(ps []netip.Prefix) netip.Prefix { return ps[0] }

func specCluster(m *spec.Mesh, region, name string) *spec.Cluster {
	for ri := range m.Regions {
		if m.Regions[ri].Name != region {
			continue
		}
		for ci := range m.Regions[ri].Clusters {
			if m.Regions[ri].Clusters[ci].Name == name {
				return &m.Regions[ri].Clusters[ci]
			}
		}
	}
	return nil
}

// MeshPeers lists the clusters (REGION/CLUSTER) one cluster must be in a
// ClusterMesh with: the other clusters of its region (global services fail
// over between them), and every cluster whose pods the policy lets reach
// this cluster's pods or be reached by them (Cilium needs the remote
// identities to enforce the rendered policies).
func MeshPeers(m *spec.Mesh, p *plan.Plan, key string) ([]string, error) {
	region, _, _ := strings.Cut(key, "/")
	set := map[string]bool{}
	byCilium := map[string]string{}
	for _, r := range p.Regions {
		for _, c := range r.Clusters {
			k := r.Name + "/" + c.Name
			byCilium[c.CiliumName] = k
			if r.Name == region {
				set[k] = true
			}
		}
	}
	if m.Policy != nil {
		objs, err := Policies(m, p, Options{})
		if err != nil {
			return nil, err
		}
		mr, mn, _ := strings.Cut(key, "/")
		me, _ := p.Cluster(mr, mn)
		for _, o := range objs {
			srcs := map[string]bool{}
			for _, ir := range o.Spec.Ingress {
				for _, sel := range ir.FromEndpoints {
					for _, req := range sel.MatchExpressions {
						if req.Key == ClusterLabel {
							for _, v := range req.Values {
								srcs[v] = true
							}
						}
					}
				}
			}
			switch {
			case o.Cluster == key: // this cluster's pods are reached from srcs
				for s := range srcs {
					set[byCilium[s]] = true
				}
			case srcs[me.CiliumName]: // this cluster's pods reach o.Cluster
				set[o.Cluster] = true
			}
		}
	}
	delete(set, key)
	delete(set, "")
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out, nil
}

// ValuesYAML renders values with a header naming what they come from.
func ValuesYAML(rv RenderedValues, mesh string) ([]byte, error) {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# Cilium Helm values for cluster %s of mesh %s, generated by StateMesh from the plan.\n", rv.Cluster, mesh)
	fmt.Fprintf(&buf, "# Re-render (statemesh render cilium) instead of editing. Pod MTU: %d.\n", rv.PodMTU)
	for _, n := range rv.notes {
		fmt.Fprintf(&buf, "# %s\n", n)
	}
	if rv.OperatorMTU != 0 {
		fmt.Fprintf(&buf, "# Operator nodes (label %s=operator) use MTU %d: see the CiliumNodeConfig rendered beside these values.\n", NodeRoleLabel, rv.OperatorMTU)
	}
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(rv.Values); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

// NodeConfig is a CiliumNodeConfig (cilium.io/v2): per-node overrides of
// cilium-config, here the MTU of operator nodes.
type NodeConfig struct {
	APIVersion string         `yaml:"apiVersion" json:"apiVersion"`
	Kind       string         `yaml:"kind" json:"kind"`
	Metadata   Metadata       `yaml:"metadata" json:"metadata"`
	Spec       NodeConfigSpec `yaml:"spec" json:"spec"`
}

// NodeConfigSpec selects nodes and overrides config keys.
type NodeConfigSpec struct {
	NodeSelector Selector          `yaml:"nodeSelector" json:"nodeSelector"`
	Defaults     map[string]string `yaml:"defaults" json:"defaults"`
}

// OperatorNodeConfig returns the CiliumNodeConfig that gives operator
// nodes (label statemesh.dev/role=operator) their smaller MTU, or nil when
// they need none.
func OperatorNodeConfig(rv RenderedValues) *NodeConfig {
	if rv.OperatorMTU == 0 {
		return nil
	}
	return &NodeConfig{APIVersion: APIVersion, Kind: "CiliumNodeConfig",
		Metadata: Metadata{Name: "statemesh-operator-mtu", Namespace: "kube-system",
			Labels: map[string]string{"app.kubernetes.io/managed-by": "statemesh"}, Annotations: map[string]string{"statemesh.dev/cluster": rv.Cluster}},
		Spec: NodeConfigSpec{NodeSelector: Selector{MatchLabels: map[string]string{NodeRoleLabel: netmap.RoleOperator}},
			Defaults: map[string]string{"mtu": strconv.Itoa(rv.OperatorMTU)}}}
}
