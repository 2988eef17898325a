package topology

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/policy"
)

// Scope is one part of an audience.
type Scope struct {
	Kind    ScopeKind `json:"kind"`
	Set     string    `json:"set,omitempty"`
	Region  string    `json:"region,omitempty"`
	Cluster string    `json:"cluster,omitempty"`
	Node    string    `json:"node,omitempty"`
	// SkipBGP leaves out BIRD-mode gateways (ScopeOtherGateways from a
	// BIRD-mode region: those reach it over backbone links).
	SkipBGP bool `json:"skipBGP,omitempty"`
}

// ScopeKind selects nodes.
type ScopeKind int

// Scope kinds.
const (
	// ScopeCluster is every active node (not gateway) of Region/Cluster.
	ScopeCluster ScopeKind = iota
	// ScopeRegionGateways is every active gateway of Region.
	ScopeRegionGateways
	// ScopeOtherGateways is every active gateway not in Region.
	ScopeOtherGateways
	// ScopeNode is the node named Node, whatever its state.
	ScopeNode
	// ScopeAll is every node.
	ScopeAll
	// ScopeSetUsers is every active node whose firewall uses the set Set.
	ScopeSetUsers
)

// Audience is who a change is for: any node some scope selects, except the
// node named Except.
type Audience struct {
	Scopes []Scope `json:"scopes"`
	Except string  `json:"except,omitempty"`
}

// Includes reports whether a node is in the audience.
func (a Audience) Includes(n *Node) bool {
	if n.Name == a.Except {
		return false
	}
	for _, s := range a.Scopes {
		switch s.Kind {
		case ScopeCluster:
			if n.active() && !n.IsGateway() && n.Region == s.Region && n.Cluster == s.Cluster {
				return true
			}
		case ScopeRegionGateways:
			if n.active() && n.IsGateway() && n.Region == s.Region {
				return true
			}
		case ScopeOtherGateways:
			if n.active() && n.IsGateway() && n.Region != s.Region && !(s.SkipBGP && n.bgpMode) {
				return true
			}
		case ScopeNode:
			if n.Name == s.Node {
				return true
			}
		case ScopeAll:
			return true
		case ScopeSetUsers:
			if n.active() && slices.Contains(n.refSets, s.Set) {
				return true
			}
		}
	}
	return false
}

// Change is one delta for an audience. When Resync is set, the audience
// must fetch a fresh map (Map) instead of applying Delta.
type Change struct {
	Audience Audience     `json:"audience"`
	Delta    netmap.Delta `json:"delta"`
	Resync   bool         `json:"resync,omitempty"`
}

func resyncNode(name string) Change {
	return Change{Audience: Audience{Scopes: []Scope{{Kind: ScopeNode, Node: name}}}, Resync: true}
}

// SetPlan replaces the plan and the policy. Every map may change, so every
// node resyncs; plans change rarely (an admin applies a spec).
func (ix *Index) SetPlan(p *plan.Plan, pol *policy.Policy) []Change {
	nodes := ix.nodes
	ix.nodes = map[string]*Node{}
	ix.sets = map[string]map[string][]netip.Prefix{}
	ix.policy = pol
	ix.setPlan(p)
	for _, n := range nodes {
		ix.insert(n)
	}
	ix.clientSets()
	for _, r := range ix.regions {
		ix.refreshRegion(r)
	}
	ix.routingChanges()
	return []Change{{Audience: Audience{Scopes: []Scope{{Kind: ScopeAll}}}, Resync: true}}
}

// ErrUnknownCluster is returned when a node names a cluster or region the
// plan does not have.
type ErrUnknownCluster struct{ Region, Cluster string }

func (e ErrUnknownCluster) Error() string {
	if e.Cluster == "" {
		return fmt.Sprintf("region %q is not in the plan", e.Region)
	}
	return fmt.Sprintf("cluster %s/%s is not in the plan", e.Region, e.Cluster)
}

// memberSets returns the firewall sets a node's prefixes belong to.
func (ix *Index) memberSets(n *Node) []string {
	if ix.policy == nil || !n.active() {
		return nil
	}
	return ix.policy.MemberSets(n.endpoint())
}

// insert adds n to the indexes without computing changes.
func (ix *Index) insert(n *Node) {
	ix.nodes[n.Name] = n
	n.bgpMode = n.IsGateway() && ix.bgp(n.Region) != nil
	if ix.policy != nil {
		n.refSets = ix.policy.FirewallFor(n.endpoint()).Sets()
		for _, s := range ix.memberSets(n) {
			if ix.sets[s] == nil {
				ix.sets[s] = map[string][]netip.Prefix{}
			}
			ix.sets[s][n.Name] = n.ownPrefixes()
		}
	}
	if n.IsGateway() {
		if r, ok := ix.regions[n.Region]; ok {
			i, _ := slices.BinarySearchFunc(r.gateways, n.Name, func(g *Node, name string) int { return cmpString(g.Name, name) })
			r.gateways = slices.Insert(r.gateways, i, n)
		}
		return
	}
	if c, ok := ix.clusters[clusterKey(n.Region, n.Cluster)]; ok {
		n.member = int32(len(c.members))
		c.members = append(c.members, n)
	}
}

func (ix *Index) delete(n *Node) {
	delete(ix.nodes, n.Name)
	for _, s := range ix.memberSets(n) {
		delete(ix.sets[s], n.Name)
	}
	if n.IsGateway() {
		if r, ok := ix.regions[n.Region]; ok {
			r.gateways = slices.DeleteFunc(r.gateways, func(g *Node) bool { return g.Name == n.Name })
		}
		return
	}
	if c, ok := ix.clusters[clusterKey(n.Region, n.Cluster)]; ok {
		if i := int(n.member); i < len(c.members) && c.members[i] == n {
			last := c.members[len(c.members)-1]
			c.members[i], last.member = last, int32(i)
			c.members[len(c.members)-1] = nil
			c.members = c.members[:len(c.members)-1]
		}
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Check reports whether a node could be placed in the index.
func (ix *Index) Check(n Node) error {
	if n.IsGateway() {
		if _, ok := ix.regions[n.Region]; !ok {
			return ErrUnknownCluster{Region: n.Region}
		}
		return nil
	}
	if _, ok := ix.clusters[clusterKey(n.Region, n.Cluster)]; !ok {
		return ErrUnknownCluster{Region: n.Region, Cluster: n.Cluster}
	}
	return nil
}

// Upsert adds or updates a node and returns the changes it causes.
func (ix *Index) Upsert(in Node) ([]Change, error) {
	if in.Role == netmap.RoleHost {
		return nil, nil // Netmaker hosts are attested, never peers
	}
	if err := ix.Check(in); err != nil {
		return nil, err
	}
	n := &in
	old, existed := ix.nodes[n.Name]
	if existed && (old.Region != n.Region || old.Cluster != n.Cluster || old.Role != n.Role) {
		changes := ix.Remove(old.Name)
		more, err := ix.Upsert(in)
		return append(changes, more...), err
	}
	var oldSets []string
	var oldRefs []string
	if existed {
		oldSets, oldRefs = ix.memberSets(old), old.refSets
		ix.delete(old)
	}
	ix.insert(n)
	setChanges := ix.setChanges(n.Name, oldSets, old, ix.memberSets(n), n)
	if existed && !slices.Equal(oldRefs, n.refSets) {
		setChanges = append(setChanges, resyncNode(n.Name))
	}
	if n.IsGateway() {
		changes := append(ix.refreshRegion(ix.regions[n.Region]), setChanges...)
		if !existed || old.active() != n.active() || old.Class != n.Class || old.PublicKey != n.PublicKey {
			changes = append(changes, resyncNode(n.Name))
		}
		return changes, nil
	}
	changes := setChanges
	entry, gwEntry := nodeEntry(n), ix.nodeEntryForGateways(n)
	cluster := Audience{Scopes: []Scope{{Kind: ScopeCluster, Region: n.Region, Cluster: n.Cluster}}, Except: n.Name}
	gateways := Audience{Scopes: []Scope{{Kind: ScopeRegionGateways, Region: n.Region}}}
	switch {
	case n.active() && (!existed || !old.active() || !nodeEntry(old).Equal(entry)):
		changes = append(changes,
			Change{Audience: cluster, Delta: netmap.Delta{Upsert: []netmap.Peer{entry}}},
			Change{Audience: gateways, Delta: netmap.Delta{Upsert: []netmap.Peer{gwEntry}}})
	case !n.active() && existed && old.active():
		changes = append(changes, Change{Audience: Audience{Scopes: append(cluster.Scopes, gateways.Scopes...), Except: n.Name}, Delta: netmap.Delta{Remove: []string{n.Name}}})
	}
	if !existed || old.active() != n.active() || old.Class != n.Class || old.PodIPv4 != n.PodIPv4 || old.PodIPv6 != n.PodIPv6 ||
		old.OverlayIPv4 != n.OverlayIPv4 || old.OverlayIPv6 != n.OverlayIPv6 {
		changes = append(changes, resyncNode(n.Name))
	}
	return changes, nil
}

// Load adds nodes to the index without computing the changes they cause:
// a controller building its index from the store at start, when no stream
// is open yet. The index ends as a Upsert of each node would leave it, at a
// fraction of the cost (maps sized once, each region's gateway entries
// computed once, not once per gateway, no delta built). The nodes come in
// chunks, whose elements the index keeps (a chunk is freed once all its
// nodes are replaced or removed): the caller must not reuse them. A node
// Upsert would refuse is passed to reject with the error and left out.
func (ix *Index) Load(chunks [][]Node, reject func(n *Node, err error)) {
	total := 0
	perCluster := map[*cluster]int{}
	for _, nodes := range chunks {
		total += len(nodes)
		for i := range nodes {
			if c, ok := ix.clusters[clusterKey(nodes[i].Region, nodes[i].Cluster)]; ok && !nodes[i].IsGateway() {
				perCluster[c]++
			}
		}
	}
	if len(ix.nodes) == 0 {
		ix.nodes = make(map[string]*Node, total)
	}
	for c, n := range perCluster {
		c.members = slices.Grow(c.members, n)
	}
	for _, nodes := range chunks {
		for i := range nodes {
			n := &nodes[i]
			if n.Role == netmap.RoleHost {
				continue
			}
			if err := ix.Check(*n); err != nil {
				if reject != nil {
					reject(n, err)
				}
				continue
			}
			if _, ok := ix.nodes[n.Name]; ok {
				// Loaded twice: the general path replaces the first.
				if _, err := ix.Upsert(*n); err != nil && reject != nil {
					reject(n, err)
				}
				continue
			}
			ix.insert(n)
		}
	}
	for _, r := range ix.regions {
		ix.refreshRegion(r)
	}
}

// Remove deletes a node and returns the changes it causes.
func (ix *Index) Remove(name string) []Change {
	n, ok := ix.nodes[name]
	if !ok {
		return nil
	}
	oldSets := ix.memberSets(n)
	ix.delete(n)
	setChanges := ix.setChanges(n.Name, oldSets, n, nil, nil)
	if n.IsGateway() {
		changes := append(ix.refreshRegion(ix.regions[n.Region]), setChanges...)
		return append(changes, resyncNode(n.Name))
	}
	changes := append([]Change{resyncNode(n.Name)}, setChanges...)
	if n.active() {
		changes = append(changes, Change{
			Audience: Audience{Scopes: []Scope{{Kind: ScopeCluster, Region: n.Region, Cluster: n.Cluster}, {Kind: ScopeRegionGateways, Region: n.Region}}, Except: n.Name},
			Delta:    netmap.Delta{Remove: []string{n.Name}},
		})
	}
	return changes
}

// SetHealth marks a gateway healthy or not and returns the changes.
func (ix *Index) SetHealth(name string, healthy bool) []Change {
	n, ok := ix.nodes[name]
	if !ok || !n.IsGateway() || n.Healthy == healthy {
		return nil
	}
	m := *n
	m.Healthy = healthy
	changes, _ := ix.Upsert(m)
	return changes
}

// refreshRegion recomputes the gateway entries of a region (as its
// clusters, its own gateways and other regions' gateways see them) and
// returns deltas for the entries that changed. Work: gateways × clusters.
func (ix *Index) refreshRegion(r *region) []Change {
	if r == nil {
		return nil
	}
	var changes []Change
	// The clients gateway moved: the old one drops its client peers, the
	// new one gets them (full maps; clients are few).
	if gw := r.clientsGateway(); gw != r.clientsGW {
		for _, g := range []string{r.clientsGW, gw} {
			if _, ok := ix.nodes[g]; ok && len(ix.Clients(r.name)) > 0 {
				changes = append(changes, resyncNode(g))
			}
		}
		r.clientsGW = gw
	}
	for _, cn := range r.clusters {
		c := ix.clusters[clusterKey(r.name, cn)]
		view := map[string]netmap.Peer{}
		for _, g := range r.gateways {
			if g.active() {
				view[g.Name] = ix.gatewayForCluster(r, g, c)
			}
		}
		if d := diffEntries(c.gwView, view); !d.Empty() {
			changes = append(changes, Change{Audience: Audience{Scopes: []Scope{{Kind: ScopeCluster, Region: r.name, Cluster: cn}}}, Delta: d})
		}
		c.gwView = view
	}
	remote := map[string]netmap.Peer{}
	local := map[string]netmap.Peer{}
	for _, g := range r.gateways {
		if g.active() {
			remote[g.Name] = ix.gatewayRemote(r, g)
			local[g.Name] = ix.gatewayLocal(g)
		}
	}
	if d := diffEntries(r.remoteView, remote); !d.Empty() {
		changes = append(changes, Change{Audience: Audience{Scopes: []Scope{{Kind: ScopeOtherGateways, Region: r.name, SkipBGP: ix.bgp(r.name) != nil}}}, Delta: d})
	}
	r.remoteView = remote
	// A gateway's own entry is in this delta too; For drops it for that
	// gateway.
	if d := diffEntries(r.localView, local); !d.Empty() {
		changes = append(changes, Change{Audience: Audience{Scopes: []Scope{{Kind: ScopeRegionGateways, Region: r.name}}}, Delta: d})
	}
	r.localView = local
	return append(changes, ix.routingChanges()...)
}

// Names reports whether the change's delta names the node (upserts or
// removes a peer of that name), in which case For must be used to deliver
// it to that node.
func (c Change) Names(name string) bool {
	return slices.ContainsFunc(c.Delta.Upsert, func(p netmap.Peer) bool { return p.Name == name }) || slices.Contains(c.Delta.Remove, name)
}

// For returns the delta as node name must receive it: a node is never its
// own peer.
func (c Change) For(name string) netmap.Delta {
	if !c.Names(name) {
		return c.Delta
	}
	d := c.Delta
	d.Upsert = slices.DeleteFunc(slices.Clone(d.Upsert), func(p netmap.Peer) bool { return p.Name == name })
	d.Remove = slices.DeleteFunc(slices.Clone(d.Remove), func(n string) bool { return n == name })
	return d
}

// diffEntries returns the delta from one set of peer entries to another.
func diffEntries(old, new map[string]netmap.Peer) netmap.Delta {
	var d netmap.Delta
	for name, p := range new {
		if o, ok := old[name]; !ok || !o.Equal(p) {
			d.Upsert = append(d.Upsert, p)
		}
	}
	for name := range old {
		if _, ok := new[name]; !ok {
			d.Remove = append(d.Remove, name)
		}
	}
	sortPeers(d.Upsert)
	slices.Sort(d.Remove)
	return d
}

// setChanges returns the set-member deltas of a node whose member sets (and
// prefixes) went from oldSets/old to newSets/new: one change per set,
// addressed to the nodes whose firewalls use it.
func (ix *Index) setChanges(name string, oldSets []string, old *Node, newSets []string, new *Node) []Change {
	var changes []Change
	var oldP, newP []netip.Prefix
	if old != nil {
		oldP = netmap.SortPrefixes(old.ownPrefixes())
	}
	if new != nil {
		newP = netmap.SortPrefixes(new.ownPrefixes())
	}
	for _, s := range newSets {
		if slices.Contains(oldSets, s) && slices.Equal(oldP, newP) {
			continue
		}
		d := netmap.Delta{SetAdd: map[string][]netip.Prefix{s: newP}}
		if slices.Contains(oldSets, s) {
			d.SetDel = map[string][]netip.Prefix{s: oldP}
		}
		changes = append(changes, Change{Audience: Audience{Scopes: []Scope{{Kind: ScopeSetUsers, Set: s}}}, Delta: d})
	}
	for _, s := range oldSets {
		if !slices.Contains(newSets, s) {
			changes = append(changes, Change{Audience: Audience{Scopes: []Scope{{Kind: ScopeSetUsers, Set: s}}}, Delta: netmap.Delta{SetDel: map[string][]netip.Prefix{s: oldP}}})
		}
	}
	return changes
}
