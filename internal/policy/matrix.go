package policy

import (
	"slices"
	"strings"
)

// Cell is what the policy allows from the members of one segment to the
// members of another.
type Cell struct {
	From string `json:"from"`
	To   string `json:"to"`
	// All: any protocol and port (members of the same segment).
	All bool `json:"all,omitempty"`
	// Ports allowed by rules (when not All), canonical and sorted.
	Ports []string `json:"ports,omitempty"`
	// Via names the segment or rules that allow it.
	Via []string `json:"via,omitempty"`
	// StrongOnly: the destination is sensitive, so only strong members of
	// From (and clients) get this.
	StrongOnly bool `json:"strongOnly,omitempty"`
}

// Denied reports whether nothing is allowed.
func (c Cell) Denied() bool { return !c.All && len(c.Ports) == 0 }

// String is the short form used in tables: "all", "tcp/443,icmp" or "-";
// a trailing "*" marks strong sources only.
func (c Cell) String() string {
	s := "-"
	switch {
	case c.All:
		s = "all"
	case len(c.Ports) > 0:
		s = strings.Join(c.Ports, ",")
	}
	if c.StrongOnly && !c.Denied() {
		s += "*"
	}
	return s
}

// Matrix is the segment × segment matrix the policy implies, row-major
// over Segments() (from × to). A nil policy has no segments.
func (p *Policy) Matrix() []Cell {
	if p == nil {
		return nil
	}
	var out []Cell
	for _, from := range p.names {
		for _, to := range p.names {
			c := Cell{From: from, To: to, StrongOnly: p.segments[to].Sensitive}
			if from == to && !p.segments[to].Isolated {
				c.All, c.Via = true, []string{"segment " + to}
			}
			ports := map[string]bool{}
			for _, r := range p.rules {
				if r.from != from || r.to != to {
					continue
				}
				c.Via = append(c.Via, "rule "+r.name)
				for _, pt := range r.ports {
					if pt.Proto == Any {
						c.All = true
					}
					ports[pt.String()] = true
				}
			}
			if !c.All {
				for pt := range ports {
					c.Ports = append(c.Ports, pt)
				}
				slices.Sort(c.Ports)
			}
			out = append(out, c)
		}
	}
	return out
}
