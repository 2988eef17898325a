package plan

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/statemesh/statemesh/internal/spec"
)

// Compute plans a validated, defaulted mesh. prev is the previous plan of
// the same mesh, or nil; existing allocations in it are kept.
func Compute(m *spec.Mesh, prev *Plan) (*Plan, error) {
	c := computer{m: m, prev: prev, p: &Plan{Mesh: m.Metadata.Name}, inf: &InfeasibleError{}}
	if m.Dataplane != nil {
		c.p.Dataplane = m.Dataplane.Firewall
	}
	c.addressing()
	if len(c.inf.Problems) > 0 {
		return nil, c.inf
	}
	c.regions()
	c.clusterIDs()
	c.pods(true)
	c.pods(false)
	c.mtus()
	if len(c.inf.Problems) > 0 {
		return nil, c.inf
	}
	c.utilization()
	return c.p, nil
}

type computer struct {
	m    *spec.Mesh
	prev *Plan
	p    *Plan
	inf  *InfeasibleError
}

func mustPrefix(s string) netip.Prefix {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		// The spec was validated; an invalid prefix here is a bug.
		panic(fmt.Sprintf("plan: unvalidated prefix %q: %v", s, err))
	}
	return p.Masked()
}

func (c *computer) addressing() {
	a := &c.p.Addressing
	a.OverlayIPv4 = mustPrefix(c.m.Addressing.OverlayIPv4)
	if c.m.Addressing.OverlayIPv6 != "" {
		a.OverlayIPv6 = mustPrefix(c.m.Addressing.OverlayIPv6)
	}
	for _, s := range c.m.Addressing.PodIPv4 {
		a.PodIPv4 = append(a.PodIPv4, mustPrefix(s))
	}
	for _, s := range c.m.Addressing.PodIPv6 {
		a.PodIPv6 = append(a.PodIPv6, mustPrefix(s))
	}
	a.RegionPrefixLen = a.OverlayIPv4.Bits() + RegionBits
	a.ClusterPrefixLen = a.RegionPrefixLen + ClusterBits
	if a.ClusterPrefixLen > 30 {
		c.inf.add(Problem{
			Subject:   "addressing.overlayIPv4",
			Detail:    fmt.Sprintf("%s is too small for %d region slots of %d cluster slots each (clusters would be /%d)", a.OverlayIPv4, 1<<RegionBits, 1<<ClusterBits, a.ClusterPrefixLen),
			Needed:    fmt.Sprintf("a /%d or larger", 30-RegionBits-ClusterBits),
			Available: a.OverlayIPv4.String(),
			WaysOut:   []string{"use the default 100.64.0.0/10"},
		})
	}
	if a.OverlayIPv6.IsValid() && a.OverlayIPv6.Bits()+RegionBits+ClusterBits > 120 {
		c.inf.add(Problem{
			Subject:   "addressing.overlayIPv6",
			Detail:    fmt.Sprintf("%s is too small for the region and cluster slots", a.OverlayIPv6),
			Needed:    fmt.Sprintf("a /%d or larger", 120-RegionBits-ClusterBits),
			Available: a.OverlayIPv6.String(),
			WaysOut:   []string{"use a /48 from your ULA range (fdXX:XXXX:XXXX::/48)"},
		})
	}
}

// slots assigns slot numbers to names: kept from prev where present, the
// lowest free slot otherwise. lo is the first usable slot.
func slots(names []string, prev map[string]int, lo, n int) map[string]int {
	out := map[string]int{}
	used := map[int]bool{}
	for _, name := range names {
		if s, ok := prev[name]; ok && s >= lo && s < n && !used[s] {
			out[name] = s
			used[s] = true
		}
	}
	next := lo
	for _, name := range names {
		if _, ok := out[name]; ok {
			continue
		}
		for used[next] {
			next++
		}
		out[name] = next
		used[next] = true
	}
	return out
}

func (c *computer) regions() {
	a := c.p.Addressing
	prevRegion := map[string]int{}
	prevCluster := map[string]map[string]int{}
	if c.prev != nil {
		for _, r := range c.prev.Regions {
			prevRegion[r.Name] = r.Slot
			prevCluster[r.Name] = map[string]int{}
			for _, cl := range r.Clusters {
				prevCluster[r.Name][cl.Name] = cl.Slot
			}
		}
	}
	names := make([]string, len(c.m.Regions))
	for i, r := range c.m.Regions {
		names[i] = r.Name
	}
	rslots := slots(names, prevRegion, 0, 1<<RegionBits)
	for ri, sr := range c.m.Regions {
		r := Region{Name: sr.Name, Slot: rslots[sr.Name]}
		if c.m.BGPEnabled(ri) {
			iv, mult := c.m.BFDTimers()
			r.BGP = &RegionBGP{ASN: c.m.RegionASN(ri), BFDIntervalMs: int(iv.Milliseconds()), BFDMultiplier: mult, PeersPerRegion: c.m.PeersPerRegion()}
			if sr.BGP != nil {
				for _, x := range sr.BGP.ExternalPeers {
					a, _ := netip.ParseAddr(x.Address) // validated
					r.BGP.ExternalPeers = append(r.BGP.ExternalPeers, ExternalPeer{Name: x.Name, Address: a, ASN: x.ASN, Password: x.Password, BFD: x.BFD, Multihop: x.Multihop})
				}
			}
		}
		r.OverlayIPv4 = nth(a.OverlayIPv4, a.RegionPrefixLen, uint64(r.Slot))
		r.InfraIPv4 = nth(r.OverlayIPv4, a.ClusterPrefixLen, 0)
		r.ClientsIPv4 = nth(r.InfraIPv4, a.ClusterPrefixLen+1, 1)
		if a.OverlayIPv6.IsValid() {
			r.OverlayIPv6 = nth(a.OverlayIPv6, a.OverlayIPv6.Bits()+RegionBits, uint64(r.Slot))
			r.InfraIPv6 = nth(r.OverlayIPv6, r.OverlayIPv6.Bits()+ClusterBits, 0)
			r.ClientsIPv6 = nth(r.InfraIPv6, r.InfraIPv6.Bits()+1, 1)
		}
		for g := range sr.Gateways {
			gw := Gateway{Index: g, OverlayIPv4: addrAt(r.InfraIPv4, uint64(1+g))}
			if r.InfraIPv6.IsValid() {
				gw.OverlayIPv6 = addrAt(r.InfraIPv6, uint64(1+g))
			}
			r.Gateways = append(r.Gateways, gw)
		}
		cnames := make([]string, len(sr.Clusters))
		for i, cl := range sr.Clusters {
			cnames[i] = cl.Name
		}
		cslots := slots(cnames, prevCluster[sr.Name], 1, 1<<ClusterBits)
		capacity := (1 << (32 - a.ClusterPrefixLen)) - 2
		for _, sc := range sr.Clusters {
			cl := Cluster{
				Name: sc.Name, Region: sr.Name, Slot: cslots[sc.Name],
				CiliumName: spec.CiliumClusterName(sr.Name, sc.Name),
				MaxNodes:   sc.MaxNodes, MaxPods: sc.MaxPods, MaxPodsPerNode: sc.MaxPodsPerNode,
				ClusterID: sc.ClusterID, Encapsulation: c.m.Cilium.RoutingMode,
			}
			cl.OverlayIPv4 = nth(r.OverlayIPv4, a.ClusterPrefixLen, uint64(cl.Slot))
			if r.OverlayIPv6.IsValid() {
				cl.OverlayIPv6 = nth(r.OverlayIPv6, r.OverlayIPv6.Bits()+ClusterBits, uint64(cl.Slot))
			}
			if sc.MaxNodes > capacity {
				c.inf.add(Problem{
					Subject:   fmt.Sprintf("%s/%s overlay", sr.Name, sc.Name),
					Detail:    fmt.Sprintf("cluster overlay blocks are /%d (%s node addresses) inside %s", a.ClusterPrefixLen, spec.Count(uint64(capacity)), a.OverlayIPv4),
					Needed:    spec.Count(uint64(sc.MaxNodes)) + " node addresses",
					Available: spec.Count(uint64(capacity)),
					WaysOut:   []string{"use a larger addressing.overlayIPv4 (the default 100.64.0.0/10 gives /19 clusters of 8,190 nodes)", fmt.Sprintf("lower maxNodes to %d", capacity)},
				})
			}
			r.Clusters = append(r.Clusters, cl)
		}
		c.p.Regions = append(c.p.Regions, r)
	}
}

func (c *computer) clusters() []*Cluster {
	var out []*Cluster
	for i := range c.p.Regions {
		for j := range c.p.Regions[i].Clusters {
			out = append(out, &c.p.Regions[i].Clusters[j])
		}
	}
	return out
}

func (c *computer) clusterIDs() {
	maxID := c.m.Cilium.MaxConnectedClusters
	used := map[int]bool{}
	all := c.clusters()
	for _, cl := range all {
		if cl.ClusterID != 0 {
			used[cl.ClusterID] = true
		}
	}
	if c.prev != nil {
		for _, cl := range all {
			if cl.ClusterID != 0 {
				continue
			}
			if pc, ok := c.prev.Cluster(cl.Region, cl.Name); ok && pc.ClusterID >= 1 && pc.ClusterID <= maxID && !used[pc.ClusterID] {
				cl.ClusterID = pc.ClusterID
				used[pc.ClusterID] = true
			}
		}
	}
	next := 1
	for _, cl := range all {
		if cl.ClusterID != 0 {
			continue
		}
		for used[next] {
			next++
		}
		if next > maxID {
			way := "set cilium.maxConnectedClusters: 511"
			if maxID >= 511 {
				// Already so: Cilium has no more.
				way = "plan at most 511 clusters per mesh (Cilium's ClusterMesh limit)"
			}
			c.inf.add(Problem{
				Subject:   "cilium cluster IDs",
				Detail:    fmt.Sprintf("%d clusters need unique Cilium cluster IDs", len(all)),
				Needed:    fmt.Sprint(len(all)),
				Available: fmt.Sprint(maxID),
				WaysOut:   []string{way},
			})
			return
		}
		cl.ClusterID = next
		used[next] = true
	}
}

// pods allocates the pod CIDRs of one family for every cluster.
func (c *computer) pods(v4 bool) {
	supers := c.p.Addressing.PodIPv6
	total := 128
	if v4 {
		supers, total = c.p.Addressing.PodIPv4, 32
	}
	explicit := map[*Cluster]netip.Prefix{}
	for ri, sr := range c.m.Regions {
		for ci, sc := range sr.Clusters {
			for _, s := range sc.PodCIDRs {
				if p := mustPrefix(s); p.Addr().Is4() == v4 {
					explicit[&c.p.Regions[ri].Clusters[ci]] = p
				}
			}
		}
	}
	all := c.clusters()
	var used []netip.Prefix
	for _, p := range explicit {
		used = append(used, p)
	}
	set := func(cl *Cluster, p netip.Prefix) {
		if v4 {
			cl.PodIPv4, cl.NodeMaskIPv4 = p, total-spec.PodBlockBits(cl.MaxPodsPerNode)
		} else {
			cl.PodIPv6, cl.NodeMaskIPv6 = p, total-spec.PodBlockBits(cl.MaxPodsPerNode)
		}
		used = append(used, p)
		sortPrefixes(used)
	}
	sortPrefixes(used)
	for cl, p := range explicit {
		if v4 {
			cl.PodIPv4, cl.NodeMaskIPv4 = p, total-spec.PodBlockBits(cl.MaxPodsPerNode)
		} else {
			cl.PodIPv6, cl.NodeMaskIPv6 = p, total-spec.PodBlockBits(cl.MaxPodsPerNode)
		}
	}
	if len(supers) == 0 {
		return
	}
	need := func(cl *Cluster) int { return total - spec.ClusterPodBits(cl.MaxNodes, cl.MaxPodsPerNode) }
	// Keep the previous plan's allocations that still fit.
	if c.prev != nil {
		for _, cl := range all {
			if _, ok := explicit[cl]; ok {
				continue
			}
			pc, ok := c.prev.Cluster(cl.Region, cl.Name)
			if !ok {
				continue
			}
			p := pc.PodIPv6
			if v4 {
				p = pc.PodIPv4
			}
			if !p.IsValid() || p.Bits() > need(cl) || !slices.ContainsFunc(supers, func(s netip.Prefix) bool { return contains(s, p) }) ||
				slices.ContainsFunc(used, p.Overlaps) {
				continue
			}
			set(cl, p)
		}
	}
	var failed []*Cluster
	for _, cl := range all {
		if _, ok := explicit[cl]; ok {
			continue
		}
		if (v4 && cl.PodIPv4.IsValid()) || (!v4 && cl.PodIPv6.IsValid()) {
			continue
		}
		p, ok := allocAligned(supers, need(cl), used)
		if !ok {
			failed = append(failed, cl)
			continue
		}
		set(cl, p)
	}
	if len(failed) > 0 {
		c.inf.add(c.podProblem(v4, supers, all, failed))
	}
}
