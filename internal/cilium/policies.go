// Package cilium renders what StateMesh asks of Cilium: the pod-level
// network policies that carry the mesh's segments and rules
// (CiliumClusterwideNetworkPolicy or, per namespace, CiliumNetworkPolicy of
// cilium.io/v2). It is pure: objects in, YAML out.
//
// Pods belong to a segment through its podLabels (default
// statemesh.dev/segment-NAME: "true") within the clusters (and regions) the
// segment selects; selectors name the source clusters with Cilium's
// io.cilium.k8s.policy.cluster label, so ClusterMesh applies them across
// clusters. External clients are matched by their segment's block of each
// region's clients range. Node class (strong/weak) is not a pod label:
// sensitive segments keep weak nodes out at the node firewall, which every
// packet between nodes passes; their Cilium policies also deny the weak
// nodes themselves (fromNodes on the node label statemesh.dev/class, with
// nodeSelectorLabels on in the rendered values).
package cilium

import (
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/policy"
	"github.com/statemesh/statemesh/internal/spec"
)

// ClusterLabel is the label Cilium gives every endpoint with its cluster's
// name (cluster.name), used by ClusterMesh policies.
const ClusterLabel = "io.cilium.k8s.policy.cluster"

// Kinds rendered.
const (
	KindClusterwide = "CiliumClusterwideNetworkPolicy"
	KindNamespaced  = "CiliumNetworkPolicy"
	APIVersion      = "cilium.io/v2"
)

// Object is one rendered policy.
type Object struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Spec       Rule     `yaml:"spec" json:"spec"`
	// comments[i] names where Spec.Ingress[i] comes from.
	comments []string
	// Cluster is REGION/CLUSTER the object is for.
	Cluster string `yaml:"-" json:"-"`
}

// Metadata of an object.
type Metadata struct {
	Name        string            `yaml:"name" json:"name"`
	Namespace   string            `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty" json:"annotations,omitempty"`
}

// Rule is a Cilium policy rule (the spec of the object).
type Rule struct {
	Description      string        `yaml:"description,omitempty" json:"description,omitempty"`
	EndpointSelector Selector      `yaml:"endpointSelector" json:"endpointSelector"`
	Ingress          []IngressRule `yaml:"ingress" json:"ingress"`
	// IngressDeny keeps weak nodes (their host network, by the node label
	// statemesh.dev/class) away from sensitive segments.
	IngressDeny []DenyRule `yaml:"ingressDeny,omitempty" json:"ingressDeny,omitempty"`
}

// DenyRule denies traffic from nodes selected by labels.
type DenyRule struct {
	FromNodes []Selector `yaml:"fromNodes" json:"fromNodes"`
}

// Selector is a Kubernetes label selector.
type Selector struct {
	MatchLabels      map[string]string `yaml:"matchLabels,omitempty" json:"matchLabels,omitempty"`
	MatchExpressions []Requirement     `yaml:"matchExpressions,omitempty" json:"matchExpressions,omitempty"`
}

// Requirement is one selector expression.
type Requirement struct {
	Key      string   `yaml:"key" json:"key"`
	Operator string   `yaml:"operator" json:"operator"`
	Values   []string `yaml:"values,omitempty" json:"values,omitempty"`
}

// IngressRule allows traffic from some peers.
type IngressRule struct {
	FromEndpoints []Selector `yaml:"fromEndpoints,omitempty" json:"fromEndpoints,omitempty"`
	FromCIDRSet   []CIDRRule `yaml:"fromCIDRSet,omitempty" json:"fromCIDRSet,omitempty"`
	ToPorts       []PortRule `yaml:"toPorts,omitempty" json:"toPorts,omitempty"`
	ICMPs         []ICMPRule `yaml:"icmps,omitempty" json:"icmps,omitempty"`
}

// CIDRRule is one source CIDR.
type CIDRRule struct {
	CIDR string `yaml:"cidr" json:"cidr"`
}

// PortRule lists L4 ports.
type PortRule struct {
	Ports []PortProtocol `yaml:"ports" json:"ports"`
}

// PortProtocol is one port (range) and protocol.
type PortProtocol struct {
	Port     string `yaml:"port" json:"port"`
	EndPort  int    `yaml:"endPort,omitempty" json:"endPort,omitempty"`
	Protocol string `yaml:"protocol" json:"protocol"`
}

// ICMPRule lists ICMP types.
type ICMPRule struct {
	Fields []ICMPField `yaml:"fields" json:"fields"`
}

// ICMPField is one ICMP type of one family.
type ICMPField struct {
	Type   string `yaml:"type" json:"type"`
	Family string `yaml:"family" json:"family"`
}

// Options of a render.
type Options struct {
	// Cluster limits the output to REGION/CLUSTER ("" for every cluster).
	Cluster string
	// Namespace renders namespaced CiliumNetworkPolicies in it instead of
	// clusterwide ones.
	Namespace string
}

// DefaultPodLabels are the labels that put a pod in a segment when the
// segment names none.
func DefaultPodLabels(segment string) map[string]string {
	return map[string]string{"statemesh.dev/segment-" + segment: "true"}
}

func podLabels(s spec.Segment) map[string]string {
	if len(s.PodLabels) > 0 {
		return s.PodLabels
	}
	return DefaultPodLabels(s.Name)
}

// Policies renders the pod-level policies of a mesh: for every cluster, one
// object per segment whose pods may run there, allowing its own members
// (unless isolated), the sources of the rules into it, and nothing else.
// Segments that select only gateways, or only clients, have no pods.
func Policies(m *spec.Mesh, p *plan.Plan, opts Options) ([]Object, error) {
	pol, err := policy.Compile(m.Policy)
	if err != nil || pol == nil {
		return nil, err
	}
	clusters := map[string]plan.Cluster{} // REGION/CLUSTER
	var order []string
	clientsOf := map[string][]netip.Prefix{} // segment -> client blocks of every region
	for _, r := range p.Regions {
		for _, c := range r.Clusters {
			k := r.Name + "/" + c.Name
			clusters[k] = c
			order = append(order, k)
		}
		for _, seg := range pol.ClientSegments() {
			for _, cp := range []netip.Prefix{r.ClientsIPv4, r.ClientsIPv6} {
				if b, ok := pol.ClientBlock(cp, seg); ok {
					clientsOf[seg] = append(clientsOf[seg], b)
				}
			}
		}
	}
	if opts.Cluster != "" {
		if _, ok := clusters[opts.Cluster]; !ok {
			return nil, fmt.Errorf("no cluster %q in the mesh (write REGION/CLUSTER)", opts.Cluster)
		}
	}
	segs := map[string]spec.Segment{}
	for _, s := range m.Policy.Segments {
		segs[s.Name] = s
	}
	// scope lists the Cilium cluster names where a segment's pods may run.
	scope := func(s spec.Segment) []string {
		if !hasPods(s) {
			return nil
		}
		var out []string
		for _, k := range order {
			c := clusters[k]
			if (len(s.Match.Regions) == 0 || slices.Contains(s.Match.Regions, c.Region)) &&
				(len(s.Match.Clusters) == 0 || slices.Contains(s.Match.Clusters, k)) {
				out = append(out, c.CiliumName)
			}
		}
		return out
	}
	// sources are the peers of a segment: its pods (fromEndpoints) and its
	// clients (fromCIDRSet) in separate rules, because Cilium refuses a rule
	// that combines the two ("combining FromCIDRSet and FromEndpoints is not
	// supported yet", api.IngressCommonRule.sanitize).
	sources := func(s spec.Segment) []IngressRule {
		var out []IngressRule
		if sc := scope(s); len(sc) > 0 {
			out = append(out, IngressRule{FromEndpoints: []Selector{{MatchLabels: podLabels(s),
				MatchExpressions: []Requirement{{Key: ClusterLabel, Operator: "In", Values: sc}}}}})
		}
		if bs := clientsOf[s.Name]; len(bs) > 0 {
			var ir IngressRule
			for _, b := range bs {
				ir.FromCIDRSet = append(ir.FromCIDRSet, CIDRRule{CIDR: b.String()})
			}
			out = append(out, ir)
		}
		return out
	}
	var out []Object
	for _, k := range order {
		if opts.Cluster != "" && k != opts.Cluster {
			continue
		}
		c := clusters[k]
		for _, name := range pol.Segments() {
			dst := segs[name]
			if !slices.Contains(scope(dst), c.CiliumName) {
				continue
			}
			o := Object{APIVersion: APIVersion, Kind: KindClusterwide, Cluster: k,
				Metadata: Metadata{
					Name:        "statemesh-segment-" + name,
					Labels:      map[string]string{"app.kubernetes.io/managed-by": "statemesh", "statemesh.dev/segment": name},
					Annotations: map[string]string{"statemesh.dev/cluster": k, "statemesh.dev/mesh": m.Metadata.Name},
				},
				Spec: Rule{
					Description:      fmt.Sprintf("StateMesh segment %s in %s: who may reach its pods (generated from mesh %s; do not edit)", name, k, m.Metadata.Name),
					EndpointSelector: Selector{MatchLabels: podLabels(dst)},
					Ingress:          []IngressRule{},
				},
			}
			if opts.Namespace != "" {
				o.Kind, o.Metadata.Namespace = KindNamespaced, opts.Namespace
			}
			if dst.Sensitive {
				o.Spec.IngressDeny = []DenyRule{{FromNodes: []Selector{{MatchLabels: map[string]string{NodeClassLabel: "weak"}}}}}
			}
			// add appends one rule per kind of source (pods, clients); a
			// source segment with neither adds nothing.
			add := func(srcs []IngressRule, comment string, with func(*IngressRule)) {
				for _, ir := range srcs {
					if with != nil {
						with(&ir)
					}
					c := comment
					if len(ir.FromCIDRSet) > 0 {
						c += ": its clients"
					}
					o.Spec.Ingress = append(o.Spec.Ingress, ir)
					o.comments = append(o.comments, c)
				}
			}
			if !dst.Isolated {
				add(sources(dst), "segment "+name+": its members, any port", nil)
			}
			for _, r := range m.Policy.Rules {
				if r.To != name {
					continue
				}
				base := sources(segs[r.From])
				var tcpudp []PortProtocol
				icmp, all := false, false
				for _, ps := range r.Ports {
					pt, err := spec.ParsePort(ps)
					if err != nil {
						return nil, fmt.Errorf("rule %s: %w", r.Name, err)
					}
					switch pt.Proto {
					case spec.ProtoAny:
						all = true
					case spec.ProtoICMP:
						icmp = true
					default:
						pp := PortProtocol{Port: fmt.Sprint(pt.From), Protocol: strings.ToUpper(pt.Proto)}
						if pt.To != pt.From {
							pp.EndPort = pt.To
						}
						tcpudp = append(tcpudp, pp)
					}
				}
				comment := fmt.Sprintf("rule %s: %s -> %s (%s)", r.Name, r.From, r.To, strings.Join(r.Ports, ", "))
				if all {
					add(base, comment, nil)
					continue
				}
				if len(tcpudp) > 0 {
					add(base, comment, func(ir *IngressRule) { ir.ToPorts = []PortRule{{Ports: tcpudp}} })
				}
				if icmp {
					add(base, comment+": echo requests", func(ir *IngressRule) {
						ir.ICMPs = []ICMPRule{{Fields: []ICMPField{{Type: "EchoRequest", Family: "IPv4"}, {Type: "EchoRequest", Family: "IPv6"}}}}
					})
				}
			}
			out = append(out, o)
		}
	}
	return out, nil
}

// hasPods reports whether a segment can hold pods: not a clients-only
// segment, and not a gateways-only one.
func hasPods(s spec.Segment) bool {
	m := s.Match
	if s.Clients && len(m.Regions)+len(m.Clusters)+len(m.Roles)+len(m.Classes)+len(m.Labels) == 0 {
		return false
	}
	return len(m.Roles) == 0 || slices.ContainsFunc(m.Roles, func(r string) bool { return r != "gateway" })
}

// YAML renders objects as one multi-document stream, each ingress rule
// preceded by a comment naming the segment or rule it comes from.
func YAML(objs []Object) ([]byte, error) {
	var buf bytes.Buffer
	for i, o := range objs {
		if i > 0 {
			buf.WriteString("---\n")
		}
		var n yaml.Node
		if err := n.Encode(o); err != nil {
			return nil, err
		}
		n.HeadComment = fmt.Sprintf("Generated by StateMesh for cluster %s; re-render instead of editing.", o.Cluster)
		if ing := lookup(lookup(&n, "spec"), "ingress"); ing != nil {
			for j, item := range ing.Content {
				if j < len(o.comments) {
					item.HeadComment = o.comments[j]
				}
			}
		}
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(&n); err != nil {
			return nil, err
		}
		enc.Close()
	}
	return buf.Bytes(), nil
}

func lookup(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// Files groups objects into one file per cluster: REGION-CLUSTER.yaml.
func Files(objs []Object) (map[string][]Object, []string) {
	files := map[string][]Object{}
	for _, o := range objs {
		name := strings.ReplaceAll(o.Cluster, "/", "-") + ".yaml"
		files[name] = append(files[name], o)
	}
	return files, slices.Sorted(maps.Keys(files))
}
