package netmaker

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/spec"
)

// Mapping is how one StateMesh construct maps to Netmaker.
type Mapping struct {
	Construct string // the StateMesh construct
	Netmaker  string // what it becomes
	Kind      string // Exact, Approximate or Refused
	Note      string // how, or why not
}

// Mapping kinds.
const (
	Exact       = "exact"
	Approximate = "approximate"
	Refused     = "cannot express"
)

// Keys of Mappings rows the code refers to.
const (
	mapLabels         = "segment matching labels"
	mapClients        = "clients segment with Netmaker hosts, or a rule between one and them"
	mapCrossNetwork   = "allowed traffic between hosts of different regions"
	mapForeignNetwork = "policy in a network StateMesh did not create"
)

// Mappings is the mapping table. docs/netmaker.md carries it verbatim
// (TestDocsCarryTheMappingTable); MapPolicy and the reconciler take their
// refusals and approximations' wording from it.
var Mappings = []Mapping{
	{"region", "one network: address range and MTU as planned, created_by statemesh, auto_join off", Exact, "the caller maps region → network name"},
	{"cluster", "one enrollment key named sm:REGION/CLUSTER#GENERATION; groups: the cluster tag and its segments' tags", Exact, "rotated by raising the generation or when a TTL runs low; revoked when the cluster goes"},
	{"attestation (strong node)", "pending host approved", Exact, "only when its WireGuard key is an attested strong node's, in the network of the node's region"},
	{"not attested / weak / refused", "pending host rejected", Exact, "if it registered with a StateMesh key: at once when refused or weak, after the grace period when unknown"},
	{"quarantine / removal", "host removed from StateMesh's networks (force)", Exact, "the delay from the StateMesh event is measured and reported"},
	{"segment", "tag sm-seg-SEGMENT in each network with members; members set from the hosts' clusters", Exact, "Netmaker hosts count as role node of the cluster they enrolled in"},
	{"segment matching regions / clusters", "tag membership of the clusters' hosts", Exact, ""},
	{"segment matching roles", "hosts are members when the roles include node (or none are given)", Exact, "operator/gateway-only segments have no Netmaker members"},
	{"segment matching classes / sensitive segment", "hosts are members when strong is selected", Exact, "only strong hosts are ever admitted"},
	{"traffic within a segment", "ACL policy statemesh-seg-SEGMENT: tag → same tag, all protocols, both ways", Exact, ""},
	{"isolated segment", "no statemesh-seg ACL policy for it", Exact, "members reach each other only through rules"},
	{"rule from → to, tcp/udp ports", "ACL policy statemesh-RULE-PROTO: source tag → destination tag, the ports, one way", Exact, ""},
	{"rule icmp / any", "ACL policy statemesh-RULE-icmp / statemesh-RULE-all", Exact, ""},
	{"no policy", "ACL policy statemesh-allow-all: * → *", Exact, ""},
	{"default deny", "Netmaker's default policy NETWORK.all-nodes disabled in networks StateMesh created", Exact, "disabled, never deleted; Detach turns it back on"},
	{mapForeignNetwork, "StateMesh's ACL policies are added; Netmaker's default allow-all is left on", Approximate, "StateMesh changes nothing it did not create, so traffic the policy denies stays allowed there"},
	{mapCrossNetwork, "nothing: Netmaker networks are separate meshes", Approximate, "the rule holds within each network; hosts in different networks cannot reach each other through Netmaker"},
	{"regional gateway", "the first healthy candidate becomes the network's gateway (relay + remote-access ingress), node metadata marks it", Approximate, "failover re-creates the gateway on the next candidate; a change of relayed hosts re-creates it (no update call in the API)"},
	{mapLabels, "-", Refused, "Netmaker knows no StateMesh node labels"},
	{mapClients, "-", Refused, "StateMesh external clients are not in Netmaker networks, and StateMesh does not manage Netmaker external clients"},
}

// MappingMarkdown renders Mappings as the Markdown table in
// docs/netmaker.md.
func MappingMarkdown() string {
	var b strings.Builder
	b.WriteString("| StateMesh | Netmaker | mapping | note |\n|---|---|---|---|\n")
	for _, m := range Mappings {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", m.Construct, m.Netmaker, m.Kind, m.Note)
	}
	return b.String()
}

// mappingNote is a row's note (the code's wording comes from the table).
func mappingNote(construct string) string {
	i := slices.IndexFunc(Mappings, func(m Mapping) bool { return m.Construct == construct })
	return Mappings[i].Note
}

// RefusedError lists the policy constructs Netmaker cannot express, each
// with its field path and the table's reason. errors.Is(err, ErrRefused).
type RefusedError struct {
	Items []string
}

func (e *RefusedError) Error() string {
	return "the policy cannot be expressed in Netmaker: " + strings.Join(e.Items, "; ")
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

// Cluster is a cluster and the Netmaker network of its region.
type Cluster struct{ Region, Name, Network string }

// PolicyMap is a policy mapped to Netmaker.
type PolicyMap struct {
	// ACLs for Desired.ACLs.
	ACLs []ACL
	// Tags maps REGION/CLUSTER to the segment tags of the cluster's hosts
	// (KeySpec.Tags).
	Tags map[string][]string
	// Notes are the approximations made.
	Notes []string
}

// MapPolicy maps a policy: ACL policies, and each cluster's segment tags.
// A construct Netmaker cannot express makes it return a *RefusedError
// naming every one (the rest is mapped; do not apply it silently: keep
// the previous ACLs with Desired.SkipPolicy). A nil policy allows all.
func MapPolicy(p *spec.Policy, clusters []Cluster) ([]ACL, map[string][]string, error) {
	m, err := Map(p, clusters)
	return m.ACLs, m.Tags, err
}

// Map is MapPolicy with the notes.
func Map(p *spec.Policy, clusters []Cluster) (PolicyMap, error) {
	out := PolicyMap{Tags: map[string][]string{}}
	networks := []string{}
	for _, c := range clusters {
		networks = append(networks, c.Network)
	}
	slices.Sort(networks)
	networks = slices.Compact(networks)
	if p == nil {
		for _, n := range networks {
			out.ACLs = append(out.ACLs, ACL{Name: ACLPrefix + "allow-all", MetaData: ACLMeta, NetworkID: n, Policy: PolicyDevice,
				Src: []ACLTag{{ID: "tag", Value: "*"}}, Dst: []ACLTag{{ID: "tag", Value: "*"}},
				Protocol: "all", ServiceType: "Any", Ports: []string{}, Direction: BothWays, Enabled: true})
		}
		return out, nil
	}
	var refused []string
	refuse := func(path, construct string) {
		refused = append(refused, fmt.Sprintf("%s: %s (%s)", path, construct, mappingNote(construct)))
	}
	members := map[string][]Cluster{} // segment → clusters whose hosts belong
	segs := map[string]spec.Segment{}
	for i, s := range p.Segments {
		segs[s.Name] = s
		path := fmt.Sprintf("policy.segments[%d] (%s)", i, s.Name)
		ms := segmentClusters(s, clusters)
		switch {
		case len(ms) > 0 && len(s.Match.Labels) > 0:
			refuse(path+".match.labels", mapLabels)
			continue
		case len(ms) > 0 && s.Clients:
			refuse(path+".clients", mapClients)
			continue
		}
		members[s.Name] = ms
		for _, c := range ms {
			k := c.Region + "/" + c.Name
			out.Tags[k] = append(out.Tags[k], SegmentTag(s.Name))
		}
		if s.Isolated {
			continue
		}
		for _, n := range clusterNetworks(ms) {
			tag := []ACLTag{{ID: "tag", Value: TagID(n, SegmentTag(s.Name))}}
			out.ACLs = append(out.ACLs, ACL{Name: ACLPrefix + "seg-" + s.Name, MetaData: ACLMeta, NetworkID: n, Policy: PolicyDevice,
				Src: tag, Dst: slices.Clone(tag), Protocol: "all", ServiceType: "Any", Ports: []string{}, Direction: BothWays, Enabled: true})
		}
	}
	for i, r := range p.Rules {
		path := fmt.Sprintf("policy.rules[%d] (%s)", i, r.Name)
		from, to := members[r.From], members[r.To]
		if (segs[r.From].Clients && len(to) > 0) || (segs[r.To].Clients && len(from) > 0) {
			refuse(path, mapClients)
			continue
		}
		protos, err := ruleProtocols(r.Ports)
		if err != nil {
			refused = append(refused, fmt.Sprintf("%s: %v", path, err))
			continue
		}
		for _, n := range networks {
			if !hasNetwork(from, n) || !hasNetwork(to, n) {
				continue
			}
			for _, pr := range protos {
				out.ACLs = append(out.ACLs, ACL{Name: ACLPrefix + r.Name + "-" + pr.proto, MetaData: ACLMeta, NetworkID: n, Policy: PolicyDevice,
					Src: []ACLTag{{ID: "tag", Value: TagID(n, SegmentTag(r.From))}}, Dst: []ACLTag{{ID: "tag", Value: TagID(n, SegmentTag(r.To))}},
					Protocol: pr.proto, ServiceType: pr.service, Ports: pr.ports, Direction: OneWay, Enabled: true})
			}
		}
		if crossNetwork(from, to) {
			out.Notes = append(out.Notes, fmt.Sprintf("%s: %s: %s", path, mapCrossNetwork, mappingNote(mapCrossNetwork)))
		}
	}
	for k := range out.Tags {
		slices.Sort(out.Tags[k])
	}
	slices.SortStableFunc(out.ACLs, func(a, b ACL) int {
		return strings.Compare(a.NetworkID+"\x00"+a.Name, b.NetworkID+"\x00"+b.Name)
	})
	if len(refused) > 0 {
		return out, &RefusedError{Items: refused}
	}
	return out, nil
}

// segmentClusters lists the clusters whose Netmaker hosts a segment
// holds: hosts are strong and count as role node of their cluster.
func segmentClusters(s spec.Segment, clusters []Cluster) []Cluster {
	m := s.Match
	if s.Clients && len(m.Regions)+len(m.Clusters)+len(m.Roles)+len(m.Classes)+len(m.Labels) == 0 {
		return nil // a clients segment holds nodes only when it selects some
	}
	if len(m.Roles) > 0 && !slices.Contains(m.Roles, netmap.RoleNode) {
		return nil
	}
	if len(m.Classes) > 0 && !slices.Contains(m.Classes, netmap.ClassStrong) {
		return nil
	}
	var out []Cluster
	for _, c := range clusters {
		if (len(m.Regions) == 0 || slices.Contains(m.Regions, c.Region)) &&
			(len(m.Clusters) == 0 || slices.Contains(m.Clusters, c.Region+"/"+c.Name)) {
			out = append(out, c)
		}
	}
	return out
}

func clusterNetworks(cs []Cluster) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Network)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func hasNetwork(cs []Cluster, n string) bool {
	return slices.ContainsFunc(cs, func(c Cluster) bool { return c.Network == n })
}

// crossNetwork: some source host and some destination host are in
// different networks (the rule allows traffic Netmaker cannot carry).
func crossNetwork(from, to []Cluster) bool {
	for _, a := range from {
		for _, b := range to {
			if a.Network != b.Network {
				return true
			}
		}
	}
	return false
}

type protoPorts struct {
	proto, service string
	ports          []string
}

// ruleProtocols groups a rule's ports by protocol: Netmaker's policy has
// one protocol and a list of ports or ranges.
func ruleProtocols(ports []string) ([]protoPorts, error) {
	by := map[string][]string{}
	if len(ports) == 0 {
		by["all"] = nil
	}
	for _, ps := range ports {
		pt, err := spec.ParsePort(ps)
		if err != nil {
			return nil, err
		}
		switch pt.Proto {
		case spec.ProtoAny:
			by["all"] = nil
		case spec.ProtoICMP:
			by["icmp"] = nil
		default:
			v := strconv.Itoa(pt.From)
			if pt.To != pt.From {
				v += "-" + strconv.Itoa(pt.To)
			}
			by[pt.Proto] = append(by[pt.Proto], v)
		}
	}
	if _, all := by["all"]; all {
		by = map[string][]string{"all": nil} // any port of any protocol covers the rest
	}
	var out []protoPorts
	for _, proto := range sortedKeys(by) {
		pp := protoPorts{proto: proto, ports: by[proto]}
		slices.Sort(pp.ports)
		pp.ports = slices.Compact(pp.ports)
		switch proto {
		case "all":
			pp.service, pp.ports = "Any", []string{}
		case "icmp":
			pp.service, pp.ports = "ICMP", []string{}
		default:
			pp.service = "Custom"
		}
		out = append(out, pp)
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
