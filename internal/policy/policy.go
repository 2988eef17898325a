// Package policy owns segmentation: which segments a node (or client)
// belongs to, what traffic the mesh's policy allows between two endpoints,
// and each node's firewall as an abstract rule set (rendered to nftables by
// the agent and to Cilium policies by render). It is pure.
//
// Semantics (docs/policy.md):
//   - members of a segment may talk to each other, unless it is isolated;
//   - a rule allows traffic from the members of one segment to the members
//     of another, for its protocols and ports;
//   - everything else between endpoints is denied (default deny);
//   - weak nodes are never members of a sensitive segment, and never reach
//     one, whatever the rules say;
//   - without a policy section everything is allowed.
//
// The compiled result does not depend on the order of segments or rules.
package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/statemesh/statemesh/internal/spec"
)

// Protocols.
const (
	TCP  = spec.ProtoTCP
	UDP  = spec.ProtoUDP
	ICMP = spec.ProtoICMP
	Any  = spec.ProtoAny
)

// Port is one allowed protocol and port range.
type Port = spec.Port

// Endpoint is what membership depends on.
type Endpoint struct {
	Name    string
	Region  string
	Cluster string
	Role    string
	Class   string
	// Labels: the node's own, over its cluster's, over its region's.
	Labels map[string]string
	// Segment is an external client's segment (clients only).
	Segment string
	Client  bool
}

// Policy is a compiled policy.
type Policy struct {
	segments map[string]*segment
	rules    []rule
	names    []string // segment names, sorted
}

type segment struct {
	spec.Segment
	clusters map[string]bool
}

type rule struct {
	name, from, to string
	ports          []Port
}

// Compile compiles a validated spec's policy; nil when the spec has none.
func Compile(p *spec.Policy) (*Policy, error) {
	if p == nil {
		return nil, nil
	}
	out := &Policy{segments: map[string]*segment{}}
	for _, s := range p.Segments {
		seg := &segment{Segment: s, clusters: map[string]bool{}}
		for _, c := range s.Match.Clusters {
			seg.clusters[c] = true
		}
		out.segments[s.Name] = seg
		out.names = append(out.names, s.Name)
	}
	slices.Sort(out.names)
	for _, r := range p.Rules {
		cr := rule{name: r.Name, from: r.From, to: r.To}
		for _, ps := range r.Ports {
			port, err := spec.ParsePort(ps)
			if err != nil {
				return nil, fmt.Errorf("rule %s: %w", r.Name, err)
			}
			cr.ports = append(cr.ports, port)
		}
		out.rules = append(out.rules, cr)
	}
	slices.SortFunc(out.rules, func(a, b rule) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// Segments lists the segment names, sorted.
func (p *Policy) Segments() []string { return slices.Clone(p.names) }

// Sensitive reports whether a segment is sensitive.
func (p *Policy) Sensitive(name string) bool {
	s, ok := p.segments[name]
	return ok && s.Sensitive
}

func matchAny(list []string, v string) bool { return len(list) == 0 || slices.Contains(list, v) }

// Member reports whether an endpoint belongs to a segment.
func (p *Policy) Member(segName string, e Endpoint) bool {
	s, ok := p.segments[segName]
	if !ok {
		return false
	}
	if e.Client {
		return s.Clients && e.Segment == segName
	}
	if s.Sensitive && e.Class != "strong" {
		return false
	}
	m := s.Match
	if s.Clients && len(m.Regions)+len(m.Clusters)+len(m.Roles)+len(m.Classes)+len(m.Labels) == 0 {
		return false // a clients segment holds nodes only when it selects some
	}
	roles := s.Match.Roles
	if len(roles) == 0 {
		roles = []string{"node", "operator"}
	}
	if !slices.Contains(roles, e.Role) || !matchAny(s.Match.Regions, e.Region) || !matchAny(s.Match.Classes, e.Class) {
		return false
	}
	if len(s.clusters) > 0 && !s.clusters[e.Region+"/"+e.Cluster] {
		return false
	}
	for k, v := range s.Match.Labels {
		if e.Labels[k] != v {
			return false
		}
	}
	return true
}

// SegmentsOf lists the segments an endpoint belongs to, sorted.
func (p *Policy) SegmentsOf(e Endpoint) []string {
	var out []string
	for _, n := range p.names {
		if p.Member(n, e) {
			out = append(out, n)
		}
	}
	return out
}

// Allowed reports whether src may send proto/port to dst, and names the
// segment or rule that allows it. A nil policy allows everything.
func (p *Policy) Allowed(src, dst Endpoint, proto string, port int) (bool, string) {
	if p == nil {
		return true, "no policy"
	}
	srcSegs, dstSegs := p.SegmentsOf(src), p.SegmentsOf(dst)
	if p.sensitiveAny(dstSegs) && src.Class != "strong" && !src.Client {
		return false, "weak source, sensitive destination"
	}
	for _, s := range dstSegs {
		if slices.Contains(srcSegs, s) && !p.segments[s].Isolated {
			return true, "segment " + s
		}
	}
	for _, r := range p.rules {
		if !slices.Contains(srcSegs, r.from) || !slices.Contains(dstSegs, r.to) {
			continue
		}
		for _, pt := range r.ports {
			if pt.Allows(proto, port) {
				return true, "rule " + r.name
			}
		}
	}
	return false, "default deny"
}

// SetName is the nftables set of a segment's members ("_strong": only its
// strong members, the sources a sensitive segment accepts).
func SetName(segment string, strongOnly bool) string {
	n := "seg_" + strings.ReplaceAll(segment, "-", "_")
	if strongOnly {
		n += "_strong"
	}
	return n
}

// MemberSets lists the sets an endpoint's addresses belong to.
func (p *Policy) MemberSets(e Endpoint) []string {
	var out []string
	for _, s := range p.SegmentsOf(e) {
		out = append(out, SetName(s, false))
		if e.Class == "strong" || e.Client {
			out = append(out, SetName(s, true))
		}
	}
	return out
}

// FirewallRule is one allow rule of a node's inbound firewall.
type FirewallRule struct {
	// Comment names the segment or rule it comes from.
	Comment string `json:"comment"`
	// Set holds the allowed sources.
	Set   string `json:"set"`
	Ports []Port `json:"ports,omitempty"` // empty: everything
}

// Firewall is a node's inbound overlay policy: allow rules in a stable
// order; everything else is dropped.
type Firewall struct {
	Rules []FirewallRule `json:"rules"`
}

// Sets lists the sets a firewall references, sorted.
func (f Firewall) Sets() []string {
	set := map[string]bool{}
	for _, r := range f.Rules {
		set[r.Set] = true
	}
	return slices.Sorted(maps.Keys(set))
}

func (p *Policy) sensitiveAny(segs []string) bool {
	return slices.ContainsFunc(segs, func(s string) bool { return p.segments[s].Sensitive })
}

// FirewallFor compiles a destination endpoint's inbound firewall. A node in
// any sensitive segment accepts only strong sources (the "_strong" sets).
func (p *Policy) FirewallFor(dst Endpoint) Firewall {
	var fw Firewall
	dstSegs := p.SegmentsOf(dst)
	strong := p.sensitiveAny(dstSegs)
	for _, s := range dstSegs {
		if !p.segments[s].Isolated {
			fw.Rules = append(fw.Rules, FirewallRule{Comment: "segment " + s + ": members", Set: SetName(s, strong)})
		}
	}
	for _, r := range p.rules {
		if !slices.Contains(dstSegs, r.to) {
			continue
		}
		fw.Rules = append(fw.Rules, FirewallRule{Comment: fmt.Sprintf("rule %s: %s -> %s", r.name, r.from, r.to),
			Set: SetName(r.from, strong), Ports: r.ports})
	}
	return fw
}
