// Package spec owns the mesh specification: the declarative, versioned YAML
// document an operator writes (kind: Mesh), its defaults and its validation.
// It is pure: it reads bytes and returns values and errors, nothing else.
//
// Every error a user can cause carries the field path to fix
// (regions[3].clusters[1].podCIDRs[0]) and, where known, the source line.
package spec

// APIVersion is the version of the spec this package reads.
const APIVersion = "statemesh.dev/v1alpha1"

// Kind is the kind of the mesh document.
const Kind = "Mesh"

// Design limits (ARCHITECTURE §1).
const (
	MaxRegions           = 20
	MaxClustersPerRegion = 10
	MaxNodesPerCluster   = 5000
	MaxPodsPerCluster    = 150000
	MinGateways          = 2
	MaxGateways          = 16
	MaxPodsPerNodeLimit  = 1024
)

// Defaults.
const (
	DefaultOverlayIPv4    = "100.64.0.0/10"
	DefaultGateways       = 2
	DefaultUnderlayMTU    = 1500
	DefaultFamily         = "ipv4"
	DefaultMaxPodsPerNode = 110
	DefaultWANMTU         = 1500
	DefaultListenPort     = 51820
)

// Underlay address families.
const (
	FamilyIPv4 = "ipv4"
	FamilyIPv6 = "ipv6"
)

// Cilium routing modes.
const (
	RoutingNative = "native"
	RoutingVXLAN  = "vxlan"
	RoutingGeneve = "geneve"
)

// Mesh is the whole mesh spec.
type Mesh struct {
	APIVersion string     `yaml:"apiVersion" json:"apiVersion"`
	Kind       string     `yaml:"kind" json:"kind"`
	Metadata   Metadata   `yaml:"metadata" json:"metadata"`
	Addressing Addressing `yaml:"addressing" json:"addressing"`
	// Underlay holds mesh-wide underlay defaults and the WAN between regions.
	Underlay Underlay `yaml:"underlay" json:"underlay"`
	// Roles overrides the underlay per node role (operator nodes often sit
	// on a different network).
	Roles  Roles  `yaml:"roles" json:"roles"`
	Cilium Cilium `yaml:"cilium" json:"cilium"`
	// Attestation is the zero-trust admission policy. Without it,
	// attestation is off and every node is admitted as weak.
	Attestation *Attestation `yaml:"attestation" json:"attestation,omitempty"`
	// Policy is segmentation: without it every node may reach every node.
	Policy *Policy `yaml:"policy" json:"policy,omitempty"`
	// Routing selects baseline (designated gateways) or BIRD mode.
	Routing *Routing `yaml:"routing" json:"routing,omitempty"`
	// Dataplane chooses how nodes enforce (an agent's --dataplane flag
	// overrides it).
	Dataplane *Dataplane `yaml:"dataplane" json:"dataplane,omitempty"`
	Regions   []Region   `yaml:"regions" json:"regions"`
}

// Dataplane choices.
const (
	DataplaneEBPF     = "ebpf"
	DataplaneNFTables = "nftables"
	DataplaneAuto     = "auto"
)

// Dataplane chooses the enforcement: ebpf (the XDP guard on the underlay
// interface and the eBPF firewall on the WireGuard interface, in front of
// nftables), nftables, or auto (eBPF where the kernel loads it, else
// nftables). Empty: each agent's flag decides.
type Dataplane struct {
	Firewall string `yaml:"firewall" json:"firewall,omitempty"`
}

// Policy declares segments and what may talk to what. Traffic between two
// members of a segment is allowed (unless it is isolated); traffic between
// segments only as a rule allows; everything else is denied. Weak nodes
// never belong to, or reach, a sensitive segment.
type Policy struct {
	Segments []Segment `yaml:"segments" json:"segments"`
	Rules    []Rule    `yaml:"rules" json:"rules"`
}

// Segment is a named set of nodes (and their pods, and external clients).
type Segment struct {
	Name  string `yaml:"name" json:"name"`
	Match Match  `yaml:"match" json:"match"`
	// Sensitive segments never hold, nor admit traffic from, weak nodes.
	Sensitive bool `yaml:"sensitive" json:"sensitive,omitempty"`
	// Isolated members may not talk to each other unless a rule says so.
	Isolated bool `yaml:"isolated" json:"isolated,omitempty"`
	// Clients marks a segment external WireGuard clients may be put in.
	Clients bool `yaml:"clients" json:"clients,omitempty"`
	// PodLabels select the segment's pods for Cilium policies (default:
	// statemesh.dev/segment-NAME: "true").
	PodLabels map[string]string `yaml:"podLabels" json:"podLabels,omitempty"`
}

// Match selects nodes: every non-empty criterion must hold; within a
// criterion, any listed value matches.
type Match struct {
	Regions  []string          `yaml:"regions" json:"regions,omitempty"`
	Clusters []string          `yaml:"clusters" json:"clusters,omitempty"` // REGION/CLUSTER
	Roles    []string          `yaml:"roles" json:"roles,omitempty"`       // default: node, operator
	Classes  []string          `yaml:"classes" json:"classes,omitempty"`
	Labels   map[string]string `yaml:"labels" json:"labels,omitempty"`
}

// Rule allows traffic from one segment to another.
type Rule struct {
	Name string `yaml:"name" json:"name"`
	From string `yaml:"from" json:"from"`
	To   string `yaml:"to" json:"to"`
	// Ports: "tcp/443", "udp/53", "tcp/8000-8100", "icmp", or "any".
	Ports []string `yaml:"ports" json:"ports"`
}

// Attestation policy.
const (
	OnFailureQuarantine = "quarantine"
	OnFailureDowngrade  = "downgrade"
	DefaultReattest     = "30s"
)

// Attestation is the TPM attestation policy.
type Attestation struct {
	// EKRoots are PEM certificates: self-signed ones are accepted EK roots,
	// the others intermediates that may complete a chain.
	EKRoots []string `yaml:"ekRoots" json:"ekRoots,omitempty"`
	// EKAllowList holds SHA-256 digests (hex) of PKIX EK public keys
	// accepted without a certificate (vTPMs).
	EKAllowList []string `yaml:"ekAllowList" json:"ekAllowList,omitempty"`
	// PCRs every quote must cover (SHA-256 bank); default 0-7.
	PCRs []int `yaml:"pcrs" json:"pcrs"`
	// Reference maps a PCR to its accepted values (hex SHA-256); a PCR not
	// listed may hold anything.
	Reference map[int][]string `yaml:"reference" json:"reference,omitempty"`
	// ReattestInterval is how often strong nodes re-attest (Go duration,
	// default 30s); a node three intervals late is treated as failed.
	ReattestInterval string `yaml:"reattestInterval" json:"reattestInterval"`
	// OnFailure is quarantine (default: cut the node off) or downgrade
	// (keep it as weak; gateways are quarantined regardless).
	OnFailure string `yaml:"onFailure" json:"onFailure"`
	// AdmitWithoutTPM admits nodes without TPM evidence as weak (default
	// false: refused). Clusters may override it. Gateways always need it.
	AdmitWithoutTPM bool `yaml:"admitWithoutTPM" json:"admitWithoutTPM"`
	// Controller, when set, is what agents require of the controller's
	// own TPM evidence (mutual aTLS): agents given this spec
	// (--controller-attestation) verify the controller before they
	// enroll, before every map stream and on the re-attestation interval,
	// and take no map from a controller that fails.
	Controller *ControllerAttestation `yaml:"controller" json:"controller,omitempty"`
}

// ControllerAttestation is the policy the controller's TPM must meet: the
// same checks as for nodes (EK chain or allow-list, AK on that TPM,
// quoted PCRs against reference values, bound to the TLS connection).
type ControllerAttestation struct {
	EKRoots     []string         `yaml:"ekRoots" json:"ekRoots,omitempty"`
	EKAllowList []string         `yaml:"ekAllowList" json:"ekAllowList,omitempty"`
	PCRs        []int            `yaml:"pcrs" json:"pcrs"`
	Reference   map[int][]string `yaml:"reference" json:"reference,omitempty"`
}

// Metadata names the mesh.
type Metadata struct {
	Name   string            `yaml:"name" json:"name"`
	Labels map[string]string `yaml:"labels" json:"labels,omitempty"`
}

// Addressing holds the supernets everything is allocated from.
type Addressing struct {
	// OverlayIPv4 is the supernet of node (WireGuard) addresses.
	OverlayIPv4 string `yaml:"overlayIPv4" json:"overlayIPv4"`
	// OverlayIPv6 optionally gives every node an IPv6 overlay address too.
	OverlayIPv6 string `yaml:"overlayIPv6" json:"overlayIPv6,omitempty"`
	// PodIPv4 are the supernets pod CIDRs are allocated from (IPv4).
	PodIPv4 []string `yaml:"podIPv4" json:"podIPv4,omitempty"`
	// PodIPv6 are the supernets pod CIDRs are allocated from (IPv6).
	PodIPv6 []string `yaml:"podIPv6" json:"podIPv6,omitempty"`
}

// Underlay describes the network WireGuard runs over.
type Underlay struct {
	// MTU is the default underlay MTU for every region and role.
	MTU int `yaml:"mtu" json:"mtu"`
	// Family is the default underlay address family (ipv4 or ipv6).
	Family string `yaml:"family" json:"family"`
	// WAN is the network between regions' gateways.
	WAN WAN `yaml:"wan" json:"wan"`
}

// WAN describes the inter-region network.
type WAN struct {
	MTU    int    `yaml:"mtu" json:"mtu"`
	Family string `yaml:"family" json:"family"`
}

// Roles holds per-role underlay overrides.
type Roles struct {
	Node     RoleUnderlay `yaml:"node" json:"node"`
	Operator RoleUnderlay `yaml:"operator" json:"operator"`
	Gateway  RoleUnderlay `yaml:"gateway" json:"gateway"`
}

// RoleUnderlay overrides the underlay for one role; zero values inherit.
type RoleUnderlay struct {
	UnderlayMTU    int    `yaml:"underlayMTU" json:"underlayMTU,omitempty"`
	UnderlayFamily string `yaml:"underlayFamily" json:"underlayFamily,omitempty"`
}

// Cilium holds mesh-wide Cilium settings.
type Cilium struct {
	// RoutingMode is native (default), vxlan or geneve.
	RoutingMode string `yaml:"routingMode" json:"routingMode"`
	// GeneveOptionBytes is the size of Geneve options Cilium adds.
	GeneveOptionBytes int `yaml:"geneveOptionBytes" json:"geneveOptionBytes,omitempty"`
	// WireGuard enables Cilium's own WireGuard encryption on top of the
	// StateMesh overlay (double encryption; off by default).
	WireGuard bool `yaml:"wireguard" json:"wireguard"`
	// MaxConnectedClusters is 255 (default) or 511; it bounds cluster IDs.
	MaxConnectedClusters int `yaml:"maxConnectedClusters" json:"maxConnectedClusters"`
	// ClustermeshDomain names clusters' clustermesh-apiservers that have
	// no clustermeshEndpoint: CLUSTER.DOMAIN:2379 (default mesh.cilium.io,
	// Cilium's own default).
	ClustermeshDomain string `yaml:"clustermeshDomain" json:"clustermeshDomain,omitempty"`
	// KubeProxyReplacement runs Cilium's eBPF service handling instead of
	// kube-proxy (default true).
	KubeProxyReplacement *bool `yaml:"kubeProxyReplacement" json:"kubeProxyReplacement,omitempty"`
}

// Region is one geographic region.
type Region struct {
	Name string `yaml:"name" json:"name"`
	// Gateways is the number of HA WireGuard servers in the region.
	Gateways int `yaml:"gateways" json:"gateways"`
	// UnderlayMTU and UnderlayFamily override the mesh defaults.
	UnderlayMTU    int               `yaml:"underlayMTU" json:"underlayMTU"`
	UnderlayFamily string            `yaml:"underlayFamily" json:"underlayFamily"`
	Labels         map[string]string `yaml:"labels" json:"labels,omitempty"`
	Roles          Roles             `yaml:"roles" json:"roles"`
	// BGP is the region's dynamic routing (BIRD mode).
	BGP      *RegionBGP `yaml:"bgp" json:"bgp,omitempty"`
	Clusters []Cluster  `yaml:"clusters" json:"clusters"`
}

// Cluster is one Kubernetes cluster.
type Cluster struct {
	Name string `yaml:"name" json:"name"`
	// PodCIDRs optionally pins the cluster's pod CIDRs (at most one IPv4 and
	// one IPv6).
	PodCIDRs       []string          `yaml:"podCIDRs" json:"podCIDRs,omitempty"`
	MaxNodes       int               `yaml:"maxNodes" json:"maxNodes"`
	MaxPods        int               `yaml:"maxPods" json:"maxPods"`
	MaxPodsPerNode int               `yaml:"maxPodsPerNode" json:"maxPodsPerNode"`
	ClusterID      int               `yaml:"clusterID" json:"clusterID,omitempty"`
	Labels         map[string]string `yaml:"labels" json:"labels,omitempty"`
	// AdmitWithoutTPM overrides attestation.admitWithoutTPM for this
	// cluster.
	AdmitWithoutTPM *bool `yaml:"admitWithoutTPM" json:"admitWithoutTPM,omitempty"`
	// ClustermeshEndpoint is where other clusters reach this cluster's
	// clustermesh-apiserver (HOST:PORT; default CILIUM-NAME.DOMAIN:2379).
	ClustermeshEndpoint string `yaml:"clustermeshEndpoint" json:"clustermeshEndpoint,omitempty"`
	// KubeAPIServer is HOST:PORT of the cluster's Kubernetes API server,
	// which Cilium needs when it replaces kube-proxy (default: auto, read
	// from the cluster).
	KubeAPIServer string `yaml:"kubeAPIServer" json:"kubeAPIServer,omitempty"`
}
