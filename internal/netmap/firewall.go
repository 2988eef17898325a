package netmap

import (
	"maps"
	"net/netip"
	"slices"
)

// Firewall is a node's inbound overlay policy: allow rules over named sets
// of source prefixes; everything else arriving through the overlay is
// dropped. A nil *Firewall in a map means the mesh has no policy (allow).
type Firewall struct {
	Rules []FirewallRule `json:"rules"`
	// Sets maps a set name to its member prefixes (sorted).
	Sets map[string][]netip.Prefix `json:"sets"`
}

// FirewallRule allows traffic from the prefixes of Set to the node, on
// Ports (none: everything). Comment names the policy segment or rule.
type FirewallRule struct {
	Comment string      `json:"comment"`
	Set     string      `json:"set"`
	Ports   []PortRange `json:"ports,omitempty"`
}

// PortRange is a protocol (tcp, udp, icmp, any) and a port range.
type PortRange struct {
	Proto string `json:"proto"`
	From  int    `json:"from,omitempty"`
	To    int    `json:"to,omitempty"`
}

// Equal reports whether two firewalls are identical.
func (f *Firewall) Equal(o *Firewall) bool {
	if f == nil || o == nil {
		return f == o
	}
	return slices.EqualFunc(f.Rules, o.Rules, func(a, b FirewallRule) bool {
		return a.Comment == b.Comment && a.Set == b.Set && slices.Equal(a.Ports, b.Ports)
	}) && maps.EqualFunc(f.Sets, o.Sets, func(a, b []netip.Prefix) bool { return slices.Equal(a, b) })
}

// Clone deep-copies a firewall.
func (f *Firewall) Clone() *Firewall {
	if f == nil {
		return nil
	}
	c := &Firewall{Sets: make(map[string][]netip.Prefix, len(f.Sets))}
	for _, r := range f.Rules {
		r.Ports = slices.Clone(r.Ports)
		c.Rules = append(c.Rules, r)
	}
	for k, v := range f.Sets {
		c.Sets[k] = slices.Clone(v)
	}
	return c
}

// SameRules reports whether two firewalls have the same rules (their sets'
// contents may differ).
func (f *Firewall) SameRules(o *Firewall) bool {
	if f == nil || o == nil {
		return f == o
	}
	a := &Firewall{Rules: f.Rules}
	b := &Firewall{Rules: o.Rules}
	return a.Equal(b)
}

// applySets adds and removes set members.
func (f *Firewall) applySets(add, del map[string][]netip.Prefix) {
	for name, ps := range del {
		cur, ok := f.Sets[name]
		if !ok {
			continue
		}
		f.Sets[name] = slices.DeleteFunc(cur, func(p netip.Prefix) bool { return slices.Contains(ps, p) })
	}
	for name, ps := range add {
		if _, ok := f.Sets[name]; !ok {
			continue // not a set this node uses
		}
		f.Sets[name] = SortPrefixes(append(f.Sets[name], ps...))
	}
}
