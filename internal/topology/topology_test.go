package topology

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/policy"
	"github.com/statemesh/statemesh/internal/spec"
)

// world is a random mesh for property tests.
type world struct {
	t    testing.TB
	r    *rand.Rand
	plan *plan.Plan
	pol  *policy.Policy
	ix   *Index
	// next node index per cluster / gateway index per region
	nextNode map[string]int
	nextGw   map[string]int
	nextCl   int
}

// newClient makes a client of the ops segment with the next address of
// the segment's block of the region's clients range.
func (w *world) newClient(region string) Client {
	pr, _ := w.plan.Region(region)
	w.nextCl++
	b4, _ := w.pol.ClientBlock(pr.ClientsIPv4, "ops")
	b6, _ := w.pol.ClientBlock(pr.ClientsIPv6, "ops")
	c := Client{Name: fmt.Sprintf("laptop%d", w.nextCl), Region: region, Segment: "ops", PublicKey: w.key(),
		IPv4: addrAt(b4, uint64(w.nextCl))}
	if b6.IsValid() {
		c.IPv6 = addrAt(b6, uint64(w.nextCl))
	}
	return c
}

// keyOf returns the public key of a node or client peer name.
func (w *world) keyOf(name string) (netmap.Key, bool) {
	if n, ok := w.ix.nodes[name]; ok {
		return n.PublicKey, true
	}
	if c, ok := w.ix.clients[strings.TrimPrefix(name, ClientPeerPrefix)]; ok && strings.HasPrefix(name, ClientPeerPrefix) {
		return c.PublicKey, true
	}
	return netmap.Key{}, false
}

func newWorld(t testing.TB, seed uint64, regions, clusters int) *world {
	t.Helper()
	return newWorldWith(t, seed, regions, clusters, "")
}

// newWorldWith adds extra top-level spec YAML (e.g. routing).
func newWorldWith(t testing.TB, seed uint64, regions, clusters int, extra string) *world {
	t.Helper()
	var b strings.Builder
	b.WriteString(extra)
	// Dual stack, in BIRD mode too (issue 15: BIRD announces IPv6).
	b.WriteString("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: w}\naddressing: {overlayIPv6: 'fd7a::/48', podIPv4: [10.0.0.0/8], podIPv6: ['fd00::/48']}\n")
	b.WriteString(`policy:
  segments:
    - {name: front, match: {labels: {tier: front}}}
    - {name: back, match: {labels: {tier: back}}, isolated: true}
    - {name: vault, match: {labels: {tier: back}, classes: [strong]}, sensitive: true}
    - {name: ops, clients: true}
  rules:
    - {name: fb, from: front, to: back, ports: ["tcp/80"]}
    - {name: bv, from: back, to: vault, ports: [any]}
    - {name: of, from: ops, to: front, ports: [any]}
`)
	b.WriteString("regions:\n")
	for r := range regions {
		fmt.Fprintf(&b, "  - name: r%d\n    gateways: 3\n    clusters:\n", r)
		for c := range clusters {
			fmt.Fprintf(&b, "      - {name: c%d, maxNodes: 100, maxPodsPerNode: 16}\n", c)
		}
	}
	m, err := spec.Parse([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Compute(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Compile(m.Policy)
	if err != nil {
		t.Fatal(err)
	}
	ix := New(p, Options{})
	ix.SetPlan(p, pol)
	return &world{t: t, r: rand.New(rand.NewPCG(seed, 7)), plan: p, pol: pol, ix: ix, nextNode: map[string]int{}, nextGw: map[string]int{}}
}

func (w *world) key() netmap.Key {
	var k netmap.Key
	for i := range k {
		k[i] = byte(w.r.UintN(256))
	}
	return k
}

func (w *world) newNode(region, cluster string) Node {
	pc, _ := w.plan.Cluster(region, cluster)
	k := clusterKey(region, cluster)
	i := w.nextNode[k]
	w.nextNode[k]++
	role := netmap.RoleNode
	if w.r.IntN(5) == 0 {
		role = netmap.RoleOperator
	}
	class := netmap.ClassWeak
	if w.r.IntN(2) == 0 {
		class = netmap.ClassStrong
	}
	labels := map[string]string{"tier": []string{"front", "back", "none"}[w.r.IntN(3)]}
	n := Node{
		Name: fmt.Sprintf("%s-%s-n%d", region, cluster, i), Region: region, Cluster: cluster, Role: role, Class: class, Labels: labels,
		PublicKey:   w.key(),
		OverlayIPv4: addrAt(pc.OverlayIPv4, uint64(1+i)),
		OverlayIPv6: addrAt(pc.OverlayIPv6, uint64(1+i)),
		PodIPv4:     subnet(pc.PodIPv4, pc.NodeMaskIPv4, i),
		PodIPv6:     subnet(pc.PodIPv6, pc.NodeMaskIPv6, i),
		Endpoint:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, byte(i), 1}), 51820),
	}
	return n
}

func (w *world) newGateway(region string) Node {
	pr, _ := w.plan.Region(region)
	i := w.nextGw[region]
	w.nextGw[region]++
	return Node{
		Name: fmt.Sprintf("%s-gw%d", region, i), Region: region, Role: netmap.RoleGateway, Class: netmap.ClassStrong,
		PublicKey: w.key(), Healthy: true,
		OverlayIPv4:    addrAt(pr.InfraIPv4, uint64(1+i)),
		OverlayIPv6:    addrAt(pr.InfraIPv6, uint64(1+i)),
		Endpoint:       netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, 200, byte(i)}), 51820),
		PublicEndpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 51820),
	}
}

func addrAt(p netip.Prefix, i uint64) netip.Addr {
	a := p.Addr()
	for range i {
		a = a.Next()
	}
	return a
}

func subnet(p netip.Prefix, bits, i int) netip.Prefix {
	if !p.IsValid() {
		return netip.Prefix{}
	}
	a := p.Addr()
	step := 1 << (a.BitLen() - bits)
	for range i * step {
		a = a.Next()
	}
	return netip.PrefixFrom(a, bits)
}

func (w *world) upsert(n Node) []Change {
	w.t.Helper()
	ch, err := w.ix.Upsert(n)
	if err != nil {
		w.t.Fatal(err)
	}
	return ch
}

// populate adds gateways and nodes to every region and cluster.
func (w *world) populate(gateways, nodes int) {
	for _, r := range w.plan.Regions {
		for range gateways {
			w.upsert(w.newGateway(r.Name))
		}
		for _, c := range r.Clusters {
			for range nodes {
				w.upsert(w.newNode(r.Name, c.Name))
			}
		}
	}
}

// owner returns the node owning an address.
func (w *world) owner(a netip.Addr) string {
	for _, c := range w.ix.clients {
		if c.IPv4 == a || c.IPv6 == a {
			return ClientPeerPrefix + c.Name
		}
	}
	for _, n := range w.ix.nodes {
		if !n.active() {
			continue
		}
		if n.OverlayIPv4 == a || n.OverlayIPv6 == a || (n.PodIPv4.IsValid() && n.PodIPv4.Contains(a)) || (n.PodIPv6.IsValid() && n.PodIPv6.Contains(a)) {
			return n.Name
		}
	}
	return ""
}

func lookup(m netmap.Map, a netip.Addr) (string, bool) {
	best, bits := "", -1
	for _, p := range m.Peers {
		for _, pfx := range p.AllowedIPs {
			if pfx.Contains(a) && pfx.Bits() > bits {
				best, bits = p.Name, pfx.Bits()
			}
		}
	}
	return best, bits >= 0
}

// walk forwards a packet from src to dst through the maps, checking
// WireGuard's source filter at every hop. It returns the hops or an error.
func (w *world) walk(maps map[string]netmap.Map, from string, src, dst netip.Addr) ([]string, error) {
	cur := from
	hops := []string{cur}
	viaBackbone := false
	for range 8 {
		if w.owner(dst) == cur {
			return hops, nil
		}
		m := maps[cur]
		if !slices.ContainsFunc(m.Routes, func(p netip.Prefix) bool { return p.Contains(dst) }) {
			return hops, fmt.Errorf("%s has no route to %s", cur, dst)
		}
		next, ok := lookup(m, dst)
		// Traffic from a backbone link to this region's prefixes looks up
		// the detour table (5200) first: BGP's route to the prefix's
		// originator over iBGP, unless this gateway originates it.
		detour := viaBackbone && m.Routing != nil && slices.ContainsFunc(m.Routing.Local, func(p netip.Prefix) bool { return p.Contains(dst) }) &&
			!slices.ContainsFunc(m.Routing.Originate, func(p netip.Prefix) bool { return p.Contains(dst) })
		viaBackbone = false
		if (!ok || detour) && m.Routing != nil {
			// BIRD mode: the route BGP selects, from the cluster's
			// originator (its designated gateway) over a backbone link.
			if next, ok = bgpNext(maps, m, dst); ok {
				if !slices.ContainsFunc(maps[next].Routing.Links, func(l netmap.BackboneLink) bool { return l.Peer == cur }) {
					return hops, fmt.Errorf("%s has a link to %s but not back", cur, next)
				}
				cur = next
				hops = append(hops, cur)
				viaBackbone = true
				continue
			}
		}
		if !ok {
			return hops, fmt.Errorf("%s: no peer carries %s", cur, dst)
		}
		nm, ok := maps[next]
		if !ok {
			return hops, fmt.Errorf("%s: peer %s has no map", cur, next)
		}
		back, ok := lookup(nm, src)
		if !ok || back != cur {
			return hops, fmt.Errorf("%s drops the packet from %s: source %s maps to peer %q (asymmetric)", next, cur, src, back)
		}
		if k, _ := w.keyOf(cur); !func() bool { p, ok := nm.Peer(cur); return ok && p.PublicKey == k }() {
			return hops, fmt.Errorf("%s does not know %s's key", next, cur)
		}
		cur = next
		hops = append(hops, cur)
	}
	return hops, fmt.Errorf("loop: %v", hops)
}

// bgpNext is the backbone neighbour BGP forwards dst to: the neighbour
// that originates it (AS path of 1, over eBGP or iBGP); else a gateway of
// this region with a link to the originator (iBGP, its AS path of 1 beats
// the prepended 3 of the originator's region's other gateways); else any
// linked gateway of the originator's region (prepended), which forwards it
// over iBGP (table 5200); else a gateway of this region with such a link.
// A bounded backbone (peersPerRegion) needs the last three; the full mesh
// only the first.
func bgpNext(maps map[string]netmap.Map, m netmap.Map, dst netip.Addr) (string, bool) {
	originates := func(name string) bool {
		pm, ok := maps[name]
		return ok && pm.Routing != nil && slices.ContainsFunc(pm.Routing.Originate, func(p netip.Prefix) bool { return p.Contains(dst) })
	}
	origin := ""
	for name, pm := range maps {
		if pm.Routing != nil && originates(name) {
			origin = name
		}
	}
	if origin == "" {
		return "", false
	}
	for _, l := range m.Routing.Links {
		if l.Peer == origin {
			return l.Peer, true
		}
	}
	for _, l := range m.Routing.Links {
		if l.PeerRegion == m.Self.Region && slices.ContainsFunc(maps[l.Peer].Routing.Links, func(b netmap.BackboneLink) bool { return b.Peer == origin }) {
			return l.Peer, true
		}
	}
	for _, l := range m.Routing.Links {
		if l.PeerRegion == maps[origin].Self.Region {
			return l.Peer, true
		}
	}
	// No link into the originator's region at all (its gateways that
	// would link this one are not there): a gateway of this region that
	// has one, over iBGP.
	for _, l := range m.Routing.Links {
		if l.PeerRegion == m.Self.Region && slices.ContainsFunc(maps[l.Peer].Routing.Links, func(b netmap.BackboneLink) bool { return b.PeerRegion == maps[origin].Self.Region }) {
			return l.Peer, true
		}
	}
	return "", false
}

func (w *world) maps() map[string]netmap.Map {
	out := map[string]netmap.Map{}
	for name := range w.ix.nodes {
		m, _ := w.ix.Map(name)
		out[name] = m
	}
	for name := range w.ix.clients {
		if m, ok := w.ix.ClientMap(name); ok {
			out[ClientPeerPrefix+name] = m
		}
	}
	return out
}

func endpointsOf(n *Node) []netip.Addr {
	out := []netip.Addr{n.OverlayIPv4}
	if n.PodIPv4.IsValid() {
		out = append(out, n.PodIPv4.Addr().Next())
	}
	if n.PodIPv6.IsValid() {
		out = append(out, n.PodIPv6.Addr().Next())
	}
	if n.OverlayIPv6.IsValid() {
		out = append(out, n.OverlayIPv6)
	}
	return out
}

// checkInvariants: no self peering, no prefix on two peers, keys right,
// and every active pair reaches each other both ways, hop by hop.
func (w *world) checkInvariants(maps map[string]netmap.Map) {
	w.t.Helper()
	for name, m := range maps {
		seen := map[netip.Prefix]string{}
		for _, p := range m.Peers {
			if p.Name == name {
				w.t.Fatalf("%s peers with itself", name)
			}
			if k, ok := w.keyOf(p.Name); !ok || k != p.PublicKey {
				w.t.Fatalf("%s: peer %s has a wrong or unknown key", name, p.Name)
			}
			for _, pfx := range p.AllowedIPs {
				if o, dup := seen[pfx]; dup {
					w.t.Fatalf("%s: prefix %s on peers %s and %s", name, pfx, o, p.Name)
				}
				seen[pfx] = p.Name
			}
		}
	}
	var active []*Node
	for _, n := range w.ix.nodes {
		if n.active() {
			active = append(active, n)
		}
	}
	slices.SortFunc(active, func(a, b *Node) int { return strings.Compare(a.Name, b.Name) })
	hasGateway := map[string]bool{}
	for _, n := range active {
		if n.IsGateway() {
			hasGateway[n.Region] = true
		}
	}
	for _, a := range active {
		for _, b := range active {
			if a == b {
				continue
			}
			sameCluster := a.Region == b.Region && a.Cluster == b.Cluster && !a.IsGateway() && !b.IsGateway()
			if !sameCluster && (!hasGateway[a.Region] || !hasGateway[b.Region]) {
				continue // no gateway left to carry it: unreachable by design
			}
			sa, da := endpointsOf(a), endpointsOf(b)
			for i := range sa {
				if i >= len(da) || sa[i].Is4() != da[i].Is4() {
					continue
				}
				if _, err := w.walk(maps, a.Name, sa[i], da[i]); err != nil {
					w.t.Fatalf("%s (%s) -> %s (%s): %v", a.Name, sa[i], b.Name, da[i], err)
				}
			}
		}
	}
	// Clients reach every node and are reached, both ways, hop by hop.
	for _, c := range w.ix.Clients("") {
		cn := ClientPeerPrefix + c.Name
		if _, ok := maps[cn]; !ok {
			if hasGateway[c.Region] {
				w.t.Fatalf("client %s has no map although its region has gateways", c.Name)
			}
			continue
		}
		for _, n := range active {
			if !hasGateway[n.Region] {
				continue
			}
			for _, d := range endpointsOf(n) {
				src := c.IPv4
				if !d.Is4() {
					src = c.IPv6
				}
				if !src.IsValid() {
					continue
				}
				if _, err := w.walk(maps, cn, src, d); err != nil {
					w.t.Fatalf("client %s (%s) -> %s (%s): %v", c.Name, src, n.Name, d, err)
				}
				if _, err := w.walk(maps, n.Name, d, src); err != nil {
					w.t.Fatalf("%s (%s) -> client %s (%s): %v", n.Name, d, c.Name, src, err)
				}
			}
		}
	}
}

func TestInvariantsRandomMeshes(t *testing.T) {
	for seed := range uint64(12) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			w := newWorld(t, seed, 1+int(seed%3), 1+int(seed%3))
			w.populate(2+int(seed%2), 1+int(seed%3))
			// Some gateways unhealthy, some nodes quarantined.
			for _, n := range w.ix.nodes {
				if n.IsGateway() && w.r.IntN(3) == 0 {
					w.ix.SetHealth(n.Name, false)
				}
			}
			w.checkInvariants(w.maps())
		})
	}
}

func TestCrossRegionPathUsesDesignatedGateways(t *testing.T) {
	w := newWorld(t, 1, 2, 2)
	w.populate(2, 1)
	maps := w.maps()
	a := w.ix.nodes["r0-c0-n0"]
	b := w.ix.nodes["r1-c1-n0"]
	hops, err := w.walk(maps, a.Name, a.OverlayIPv4, b.OverlayIPv4)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{a.Name, w.ix.regions["r0"].designated("c0"), w.ix.regions["r1"].designated("c1"), b.Name}
	if !slices.Equal(hops, want) {
		t.Errorf("hops %v, want %v", hops, want)
	}
	// The way back takes the same gateways.
	back, err := w.walk(maps, b.Name, b.OverlayIPv4, a.OverlayIPv4)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(back)
	if !slices.Equal(back, want) {
		t.Errorf("return path %v differs from %v", back, want)
	}
}

// TestIncrementalEqualsRecompute applies random changes and checks that
// every node's map, kept up to date only by the deltas addressed to it,
// equals the map computed from scratch.
func TestIncrementalEqualsRecompute(t *testing.T) {
	for seed := range uint64(9) {
		extra := ""
		if seed >= 6 {
			extra = "routing: {bgp: true}\n" // BIRD mode: backbone links replace gateway peers
		}
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			w := newWorldWith(t, seed, 2, 3, extra)
			w.populate(2, 2)
			held := w.maps()
			apply := func(changes []Change) {
				for _, ch := range changes {
					for name, n := range w.ix.nodes {
						if !ch.Audience.Includes(n) {
							continue
						}
						if ch.Resync {
							held[name], _ = w.ix.Map(name)
							continue
						}
						held[name] = held[name].Apply(ch.For(name))
					}
				}
				for name := range held {
					if _, ok := w.ix.nodes[name]; !ok {
						delete(held, name)
					}
				}
			}
			for step := range 60 {
				var what string
				regions := []string{"r0", "r1"}
				r := regions[w.r.IntN(2)]
				switch op := w.r.IntN(9); op {
				case 0:
					n := w.newNode(r, fmt.Sprintf("c%d", w.r.IntN(3)))
					what = "add " + n.Name
					apply(w.upsert(n))
				case 1:
					names := w.nodeNames(false)
					if len(names) == 0 {
						continue
					}
					name := names[w.r.IntN(len(names))]
					what = "remove " + name
					apply(w.ix.Remove(name))
				case 2:
					gws := w.ix.Gateways(r)
					if len(gws) == 0 {
						continue
					}
					g := gws[w.r.IntN(len(gws))]
					h := !w.ix.nodes[g].Healthy
					what = fmt.Sprintf("health %s %v", g, h)
					apply(w.ix.SetHealth(g, h))
				case 3:
					g := w.newGateway(r)
					what = "add gateway " + g.Name
					apply(w.upsert(g))
				case 4:
					names := w.nodeNames(true)
					name := names[w.r.IntN(len(names))]
					n := *w.ix.nodes[name]
					switch w.r.IntN(3) {
					case 0:
						if n.State == StateQuarantined {
							n.State = StateActive
						} else {
							n.State = StateQuarantined
						}
					case 1:
						if n.Class == netmap.ClassStrong {
							n.Class = netmap.ClassWeak
						} else {
							n.Class = netmap.ClassStrong
						}
					case 2:
						n.Labels = map[string]string{"tier": []string{"front", "back", "none"}[w.r.IntN(3)]}
					}
					what = fmt.Sprintf("update %s: %s %s %v", name, n.State, n.Class, n.Labels)
					apply(w.upsert(n))
				case 5:
					gws := w.ix.Gateways(r)
					if len(gws) <= 1 {
						continue
					}
					g := gws[w.r.IntN(len(gws))]
					what = "remove gateway " + g
					apply(w.ix.Remove(g))
				case 6:
					c := w.newClient(r)
					what = "add client " + c.Name
					ch, err := w.ix.UpsertClient(c)
					if err != nil {
						t.Fatal(err)
					}
					apply(ch)
				case 7:
					cs := w.ix.Clients("")
					if len(cs) == 0 {
						continue
					}
					c := cs[w.r.IntN(len(cs))]
					what = "remove client " + c.Name
					apply(w.ix.RemoveClient(c.Name))
				case 8:
					// Pin the clients gateway (or unpin: "").
					gw := ""
					if gws := w.ix.Gateways(r); len(gws) > 0 && w.r.IntN(4) > 0 {
						gw = gws[w.r.IntN(len(gws))]
					}
					what = fmt.Sprintf("pin %s's clients gateway to %q", r, gw)
					apply(w.ix.PinClientsGateway(r, gw))
				}
				fresh := w.maps()
				for name, m := range fresh {
					if strings.HasPrefix(name, ClientPeerPrefix) {
						continue // clients get configuration files, not deltas
					}
					if !held[name].Equal(m) {
						t.Fatalf("step %d (%s): %s's map from deltas differs from recompute:\nheld  %+v %+v %+v\nfresh %+v %+v %+v", step, what, name, held[name].Peers, held[name].Firewall, held[name].Routing, m.Peers, m.Firewall, m.Routing)
					}
				}
				w.checkFirewalls(fresh)
				w.checkInvariants(fresh)
				checkMembers(t, w.ix)
			}
		})
	}
}

// checkMembers: every node not a gateway is once among its cluster's
// members, at the index it records, and nothing else is.
func checkMembers(t *testing.T, ix *Index) {
	t.Helper()
	count := 0
	for key, c := range ix.clusters {
		for i, n := range c.members {
			if int(n.member) != i || ix.nodes[n.Name] != n || clusterKey(n.Region, n.Cluster) != key {
				t.Fatalf("cluster %s: member %d is %s (index %d, indexed %v)", key, i, n.Name, n.member, ix.nodes[n.Name] == n)
			}
		}
		count += len(c.members)
	}
	want := 0
	for _, n := range ix.nodes {
		if !n.IsGateway() {
			want++
		}
	}
	if count != want {
		t.Fatalf("%d members in all, %d nodes", count, want)
	}
}

func (w *world) nodeNames(withGateways bool) []string {
	var out []string
	for name, n := range w.ix.nodes {
		if withGateways || !n.IsGateway() {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func TestRendezvousMovesOnlyTheLostGatewaysClusters(t *testing.T) {
	gws := []string{"g0", "g1", "g2"}
	var keys []string
	for i := range 300 {
		keys = append(keys, fmt.Sprintf("cluster:c%d", i))
	}
	before := map[string]string{}
	count := map[string]int{}
	for _, k := range keys {
		before[k] = Rendezvous(k, gws)
		count[before[k]]++
	}
	for _, g := range gws {
		if count[g] < 70 || count[g] > 130 {
			t.Errorf("gateway %s carries %d of 300 clusters: poor load distribution", g, count[g])
		}
	}
	moved := 0
	for _, k := range keys {
		after := Rendezvous(k, []string{"g0", "g2"})
		if before[k] != "g1" && after != before[k] {
			t.Fatalf("%s moved from %s though %s is alive", k, before[k], before[k])
		}
		if before[k] == "g1" {
			moved++
		}
	}
	// Adding a fourth gateway moves about a quarter.
	grown := 0
	for _, k := range keys {
		if Rendezvous(k, []string{"g0", "g1", "g2", "g3"}) != before[k] {
			grown++
		}
	}
	if grown < 45 || grown > 105 {
		t.Errorf("adding a 4th gateway moved %d of 300 clusters, want about 75", grown)
	}
	// From two gateways to three: about a third moves, all to the new one.
	third := 0
	for _, k := range keys {
		two, three := Rendezvous(k, []string{"g0", "g1"}), Rendezvous(k, gws)
		if two != three {
			third++
			if three != "g2" {
				t.Fatalf("%s moved from %s to %s, not to the new gateway", k, two, three)
			}
		}
	}
	if third < 70 || third > 130 {
		t.Errorf("adding a 3rd gateway moved %d of 300 clusters, want about 100", third)
	}
}

func TestJoinCostsOneEntry(t *testing.T) {
	w := newWorld(t, 3, 1, 1)
	w.populate(2, 50)
	n := w.newNode("r0", "c0")
	changes := w.upsert(n)
	peerDeltas := 0
	for _, c := range changes {
		if !c.Resync {
			peerDeltas++
			if len(c.Delta.Upsert) != 1 || c.Delta.Upsert[0].Name != n.Name {
				t.Errorf("join delta carries %d peers", len(c.Delta.Upsert))
			}
		}
	}
	if peerDeltas != 2 {
		t.Errorf("join produced %d peer deltas, want 2: one shared by the cluster, one by its gateways", peerDeltas)
	}
}

func TestQuarantinedNodeIsCutOff(t *testing.T) {
	w := newWorld(t, 4, 1, 1)
	w.populate(2, 3)
	n := *w.ix.nodes["r0-c0-n1"]
	n.State = StateQuarantined
	w.upsert(n)
	for name, m := range w.maps() {
		if name == n.Name {
			if len(m.Peers) != 0 || len(m.Routes) != 0 {
				t.Errorf("quarantined node still has %d peers", len(m.Peers))
			}
			continue
		}
		if _, ok := m.Peer(n.Name); ok {
			t.Errorf("%s still peers with quarantined %s", name, n.Name)
		}
	}
}

// checkFirewalls: every node's firewall, with its sets, allows exactly what
// the policy allows from every other active node.
func (w *world) checkFirewalls(maps map[string]netmap.Map) {
	w.t.Helper()
	for dname, m := range maps {
		dst, ok := w.ix.nodes[dname]
		if !ok || !dst.active() {
			continue // clients have no firewall of ours
		}
		if m.Firewall == nil {
			w.t.Fatalf("%s has no firewall under a policy", dname)
		}
		for _, src := range w.ix.nodes {
			if src.Name == dname || !src.active() {
				continue
			}
			for _, port := range []int{80, 22} {
				fwAllows := false
				for _, r := range m.Firewall.Rules {
					if !slices.Contains(m.Firewall.Sets[r.Set], netip.PrefixFrom(src.OverlayIPv4, 32)) {
						continue
					}
					ok := len(r.Ports) == 0
					for _, p := range r.Ports {
						ok = ok || p.Proto == "any" || (p.Proto == "tcp" && port >= p.From && port <= p.To)
					}
					fwAllows = fwAllows || ok
				}
				want, why := w.pol.Allowed(src.endpoint(), dst.endpoint(), "tcp", port)
				if fwAllows != want {
					w.t.Fatalf("%s → %s tcp/%d: firewall %v, policy %v (%s)", src.Name, dname, port, fwAllows, want, why)
				}
			}
		}
		// Clients are members through their segment's block.
		for _, c := range w.ix.Clients("") {
			fwAllows := false
			for _, r := range m.Firewall.Rules {
				if slices.ContainsFunc(m.Firewall.Sets[r.Set], func(p netip.Prefix) bool { return p.Contains(c.IPv4) }) {
					fwAllows = true // the ops rule allows any port
				}
			}
			want, why := w.pol.Allowed(policy.Endpoint{Name: c.Name, Client: true, Segment: c.Segment}, dst.endpoint(), "tcp", 80)
			if fwAllows != want {
				w.t.Fatalf("client %s → %s: firewall %v, policy %v (%s)", c.Name, dname, fwAllows, want, why)
			}
		}
	}
}

// TestLoadEqualsUpserts: an index loaded in bulk (a controller's start) is
// the index the same nodes' upserts build: the same maps, and the same
// changes for what happens next.
func TestLoadEqualsUpserts(t *testing.T) {
	for seed := range uint64(6) {
		extra := ""
		if seed >= 4 {
			extra = "routing: {bgp: true}\n"
		}
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			w := newWorldWith(t, seed, 2, 3, extra)
			w.populate(3, 4)
			for i, g := range w.ix.Gateways("r0") {
				w.ix.SetHealth(g, i%2 == 0)
			}
			q := *w.ix.nodes[w.nodeNames(false)[0]]
			q.State = StateQuarantined
			w.upsert(q)
			var nodes []Node
			for _, n := range w.ix.nodes {
				m := *n
				m.refSets, m.routing, m.bgpMode = nil, nil, false
				nodes = append(nodes, m)
			}
			nodes = append(nodes, Node{Name: "stray", Region: "r0", Cluster: "nope", Role: netmap.RoleNode})
			w.r.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
			ix := New(w.plan, Options{})
			ix.SetPlan(w.plan, w.pol)
			var rejected []string
			ix.Load([][]Node{nodes[:len(nodes)/2], nodes[len(nodes)/2:]}, func(n *Node, err error) { rejected = append(rejected, n.Name) })
			if !slices.Equal(rejected, []string{"stray"}) {
				t.Fatalf("rejected %v, want [stray]", rejected)
			}
			checkMembers(t, ix)
			if ix.Len() != w.ix.Len() {
				t.Fatalf("loaded %d nodes, upserted %d", ix.Len(), w.ix.Len())
			}
			for name := range w.ix.nodes {
				want, _ := w.ix.Map(name)
				got, _ := ix.Map(name)
				if !got.Equal(want) {
					t.Fatalf("%s: loaded map differs from upserted:\ngot  %+v\nwant %+v", name, got, want)
				}
			}
			same := func(what string, a, b []Change) {
				t.Helper()
				enc := func(cs []Change) []string {
					var out []string
					for _, c := range cs {
						out = append(out, fmt.Sprintf("%+v", c))
					}
					slices.Sort(out)
					return out
				}
				if ea, eb := enc(a), enc(b); !slices.Equal(ea, eb) {
					t.Fatalf("%s: changes differ:\nupserted %v\nloaded   %v", what, ea, eb)
				}
			}
			g := w.newGateway("r1")
			a, _ := w.ix.Upsert(g)
			b, _ := ix.Upsert(g)
			same("gateway joins", a, b)
			gw := w.ix.Gateways("r0")[0]
			same("gateway fails", w.ix.SetHealth(gw, false), ix.SetHealth(gw, false))
			n := w.newNode("r0", "c1")
			a, _ = w.ix.Upsert(n)
			b, _ = ix.Upsert(n)
			same("node joins", a, b)
			c := w.newClient("r1")
			a, _ = w.ix.UpsertClient(c)
			b, _ = ix.UpsertClient(c)
			same("client joins", a, b)
		})
	}
}
