package netmap

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
)

// Delta is the difference between two maps of one node. Applying it to the
// older map yields the newer one. Only the parts that changed are set.
type Delta struct {
	// Revision is the revision of the resulting map.
	Revision int64 `json:"revision"`
	// Self is set when the node's own description changed.
	Self *Self `json:"self,omitempty"`
	// Interface is set when the interface configuration changed.
	Interface *Interface `json:"interface,omitempty"`
	// Upsert holds peers that were added or changed, sorted by name.
	Upsert []Peer `json:"upsert,omitempty"`
	// Remove holds the names of peers that were removed, sorted.
	Remove []string `json:"remove,omitempty"`
	// Routes is the full new route list when it changed.
	Routes []netip.Prefix `json:"routes,omitempty"`
	// RoutesChanged distinguishes "no routes" from "routes unchanged".
	RoutesChanged bool `json:"routesChanged,omitempty"`
	// Forwarding is set when forwarding changed.
	Forwarding *bool `json:"forwarding,omitempty"`
	// Firewall replaces the whole firewall when its rules changed;
	// FirewallChanged distinguishes a removed firewall from no change.
	Firewall        *Firewall `json:"firewall,omitempty"`
	FirewallChanged bool      `json:"firewallChanged,omitempty"`
	// SetAdd and SetDel add and remove members of firewall sets (the sets a
	// node does not use are ignored).
	SetAdd map[string][]netip.Prefix `json:"setAdd,omitempty"`
	SetDel map[string][]netip.Prefix `json:"setDel,omitempty"`
}

// Empty reports whether the delta changes nothing (revision aside).
func (d Delta) Empty() bool {
	return d.Self == nil && d.Interface == nil && len(d.Upsert) == 0 && len(d.Remove) == 0 &&
		!d.RoutesChanged && d.Forwarding == nil && !d.FirewallChanged && len(d.SetAdd) == 0 && len(d.SetDel) == 0
}

// Diff returns the delta that turns old into new. Both maps must be
// normalized. The work is linear in the number of peers of both maps.
func Diff(old, new Map) Delta {
	d := Delta{Revision: new.Revision}
	if !old.Self.Equal(new.Self) {
		s := new.Self
		d.Self = &s
	}
	if !old.Interface.Equal(new.Interface) {
		i := new.Interface
		d.Interface = &i
	}
	if !slices.Equal(old.Routes, new.Routes) {
		d.Routes = slices.Clone(new.Routes)
		d.RoutesChanged = true
	}
	if old.Forwarding != new.Forwarding {
		f := new.Forwarding
		d.Forwarding = &f
	}
	if !old.Firewall.Equal(new.Firewall) {
		if old.Firewall != nil && new.Firewall != nil && old.Firewall.SameRules(new.Firewall) && slices.Equal(slices.Sorted(maps.Keys(old.Firewall.Sets)), slices.Sorted(maps.Keys(new.Firewall.Sets))) {
			d.SetAdd, d.SetDel = setDiff(old.Firewall.Sets, new.Firewall.Sets)
		} else {
			d.Firewall, d.FirewallChanged = new.Firewall.Clone(), true
		}
	}
	i, j := 0, 0
	for i < len(old.Peers) || j < len(new.Peers) {
		switch {
		case j == len(new.Peers) || (i < len(old.Peers) && old.Peers[i].Name < new.Peers[j].Name):
			d.Remove = append(d.Remove, old.Peers[i].Name)
			i++
		case i == len(old.Peers) || new.Peers[j].Name < old.Peers[i].Name:
			d.Upsert = append(d.Upsert, new.Peers[j])
			j++
		default:
			if !old.Peers[i].Equal(new.Peers[j]) {
				d.Upsert = append(d.Upsert, new.Peers[j])
			}
			i++
			j++
		}
	}
	return d
}

// Apply returns the map that results from applying d to m. m is not
// modified.
func (m Map) Apply(d Delta) Map {
	out := m.Clone()
	out.Revision = d.Revision
	if d.Self != nil {
		out.Self = *d.Self
	}
	if d.Interface != nil {
		out.Interface = *d.Interface
	}
	if d.RoutesChanged {
		out.Routes = slices.Clone(d.Routes)
	}
	if d.Forwarding != nil {
		out.Forwarding = *d.Forwarding
	}
	if d.FirewallChanged {
		out.Firewall = d.Firewall.Clone()
	}
	if out.Firewall != nil && (len(d.SetAdd) > 0 || len(d.SetDel) > 0) {
		out.Firewall.applySets(d.SetAdd, d.SetDel)
	}
	if len(d.Remove) == 0 && len(d.Upsert) == 0 {
		return out
	}
	removed := make(map[string]bool, len(d.Remove))
	for _, n := range d.Remove {
		removed[n] = true
	}
	upsert := make(map[string]Peer, len(d.Upsert))
	for _, p := range d.Upsert {
		upsert[p.Name] = p
	}
	peers := out.Peers[:0:0]
	for _, p := range out.Peers {
		if removed[p.Name] {
			continue
		}
		if u, ok := upsert[p.Name]; ok {
			p = u
			delete(upsert, p.Name)
		}
		peers = append(peers, p)
	}
	for _, p := range upsert {
		peers = append(peers, p)
	}
	slices.SortFunc(peers, func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	out.Peers = peers
	return out
}

// setDiff returns the members added to and removed from each set.
func setDiff(old, new map[string][]netip.Prefix) (add, del map[string][]netip.Prefix) {
	for name, ps := range new {
		for _, p := range ps {
			if !slices.Contains(old[name], p) {
				if add == nil {
					add = map[string][]netip.Prefix{}
				}
				add[name] = append(add[name], p)
			}
		}
	}
	for name, ps := range old {
		for _, p := range ps {
			if !slices.Contains(new[name], p) {
				if del == nil {
					del = map[string][]netip.Prefix{}
				}
				del[name] = append(del[name], p)
			}
		}
	}
	return add, del
}
