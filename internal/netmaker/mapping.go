package netmaker

import (
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/spec"
)

// Mapping is how a StateMesh policy construct maps to Netmaker: Exact,
// Approximate (with how), or Refused (with why). The table is in
// docs/netmaker.md; MapPolicy applies it.
type Mapping struct {
	Construct, Netmaker, Kind, Note string
}

// Mapping kinds.
const (
	Exact       = "exact"
	Approximate = "approximate"
	Refused     = "refused"
)

// Mappings is the table.
var Mappings = []Mapping{
	{"region", "one network (address range = the region's overlay block, MTU = the plan's node MTU)", Exact, ""},
	{"cluster", "one enrollment key tagged sm-cluster-REGION-CLUSTER (and with its segments' tags)", Exact, "hosts that join with it carry the tags"},
	{"attestation (strong nodes)", "pending-host approval", Exact, "a host is approved only if its WireGuard key is an attested StateMesh node's; others are rejected after the grace period"},
	{"quarantine / removal", "host removed from its networks", Exact, "within one reconcile interval"},
	{"segment matching regions/clusters", "tag sm-seg-SEGMENT on the clusters' keys", Exact, ""},
	{"segment with classes: [strong]", "tag sm-seg-SEGMENT", Exact, "only attested (strong) hosts are admitted at all"},
	{"sensitive segment", "tag sm-seg-SEGMENT", Exact, "weak nodes never join a Netmaker network, so none can be a member"},
	{"rule from → to, tcp/udp ports", "device ACL policy per protocol, src tag → dst tag, one direction", Exact, ""},
	{"rule icmp / any", "device ACL policy, protocol icmp / all", Exact, ""},
	{"default deny between segments", "the network's default policy", Approximate, "Netmaker's default policy allows all within a network; the operator must disable it (StateMesh does not change objects it did not create)"},
	{"segment matching labels", "-", Refused, "Netmaker does not know StateMesh node labels"},
	{"segment with classes: [weak]", "-", Refused, "weak nodes are never admitted to Netmaker networks"},
	{"isolated segment", "-", Refused, "Netmaker ACLs allow within a tag; 'members may not talk to each other' cannot be written"},
	{"clients segment", "-", Refused, "Netmaker external clients are not managed by StateMesh"},
}

// SegmentTag is a segment's Netmaker tag name.
func SegmentTag(segment string) string { return "sm-seg-" + segment }

// Cluster is a cluster and the network of its region.
type Cluster struct{ Region, Name, Network string }

// MapPolicy maps a policy to ACL policies and the segment tags each
// cluster's key carries. A construct Netmaker cannot express is refused
// (every one is listed), never dropped.
func MapPolicy(p *spec.Policy, clusters []Cluster) ([]ACL, map[string][]string, error) {
	tags := map[string][]string{}
	if p == nil {
		return nil, tags, nil
	}
	var errs []error
	members := map[string][]Cluster{}
	for i, s := range p.Segments {
		path := fmt.Sprintf("policy.segments[%d] (%s)", i, s.Name)
		switch {
		case len(s.Match.Labels) > 0:
			errs = append(errs, fmt.Errorf("%s: matches labels, which Netmaker does not know", path))
			continue
		case slices.Contains(s.Match.Classes, netmap.ClassWeak):
			errs = append(errs, fmt.Errorf("%s: selects weak nodes, which are never admitted to Netmaker", path))
			continue
		case s.Isolated:
			errs = append(errs, fmt.Errorf("%s: isolated segments cannot be written as Netmaker ACLs", path))
			continue
		case s.Clients:
			errs = append(errs, fmt.Errorf("%s: external clients are not managed in Netmaker by StateMesh", path))
			continue
		}
		for _, c := range clusters {
			if (len(s.Match.Regions) == 0 || slices.Contains(s.Match.Regions, c.Region)) &&
				(len(s.Match.Clusters) == 0 || slices.Contains(s.Match.Clusters, c.Region+"/"+c.Name)) {
				members[s.Name] = append(members[s.Name], c)
				k := c.Region + "/" + c.Name
				tags[k] = append(tags[k], SegmentTag(s.Name))
			}
		}
	}
	networks := map[string]bool{}
	for _, c := range clusters {
		networks[c.Network] = true
	}
	var acls []ACL
	for _, r := range p.Rules {
		byProto := map[string][]string{}
		for _, ps := range r.Ports {
			pt, err := spec.ParsePort(ps)
			if err != nil {
				errs = append(errs, fmt.Errorf("rule %s: %w", r.Name, err))
				continue
			}
			switch pt.Proto {
			case spec.ProtoAny:
				byProto["all"] = nil
			case spec.ProtoICMP:
				byProto["icmp"] = nil
			default:
				v := strconv.Itoa(pt.From)
				if pt.To != pt.From {
					v += "-" + strconv.Itoa(pt.To)
				}
				byProto[pt.Proto] = append(byProto[pt.Proto], v)
			}
		}
		if len(r.Ports) == 0 {
			byProto["all"] = nil
		}
		for _, net := range sortedKeys(networks) {
			if !hasNetwork(members[r.From], net) || !hasNetwork(members[r.To], net) {
				continue // one end has no hosts in this network
			}
			for _, proto := range sortedKeys(byProto) {
				ports := byProto[proto]
				if ports == nil {
					ports = []string{}
				}
				acls = append(acls, ACL{
					Name: ACLPrefix + r.Name + "-" + proto, MetaData: ACLMeta, NetworkID: net, Policy: "device-policy",
					Src:      []ACLTag{{ID: "tag", Value: net + "." + SegmentTag(r.From)}},
					Dst:      []ACLTag{{ID: "tag", Value: net + "." + SegmentTag(r.To)}},
					Protocol: proto, Ports: ports, Direction: 0, Enabled: true,
				})
			}
		}
	}
	return acls, tags, errors.Join(errs...)
}

func hasNetwork(cs []Cluster, net string) bool {
	return slices.ContainsFunc(cs, func(c Cluster) bool { return c.Network == net })
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
