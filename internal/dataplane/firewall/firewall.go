// Package firewall owns StateMesh's nftables table on a node (inet
// "statemesh"; it never touches any other table):
//
//   - underlay: only WireGuard from the node's known peers (and what the
//     operator explicitly allows, e.g. tcp/22) reaches the node from outside
//     the mesh; replies to the node's own connections (the control channel)
//     pass as established;
//   - overlay: traffic arriving through the WireGuard interface, to the
//     node or to its pods, must match an allow rule of the node's policy
//     (named sets of source prefixes, each rule commented with the segment
//     or rule it comes from); everything else is dropped and counted;
//   - gateways forward transit traffic; destinations enforce.
//
// The whole table is replaced in one nft transaction (atomic); set members
// change by element, in small transactions of their own.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/statemesh/statemesh/internal/netmap"
)

// Table is StateMesh's table.
const Table = "statemesh"

// State is the desired firewall of a node.
type State struct {
	Interface  string
	ListenPort int
	// Peers are the underlay addresses WireGuard may come from.
	Peers []netip.Addr
	// Policy is the overlay policy; nil allows all overlay traffic.
	Policy *netmap.Firewall
	// Pods are the node's own pod blocks.
	Pods []netip.Prefix
	// Gateway nodes forward transit traffic and accept WireGuard from any
	// address (external clients have no known endpoint).
	Gateway bool
	// UnderlayAllow are extra ports open on the underlay ("tcp/22").
	UnderlayAllow []netmap.PortRange
	// BackbonePorts are the UDP ports of a BIRD-mode gateway's backbone
	// links; BackbonePrefix is the interface-name prefix of those links,
	// over which BGP and BFD come from the other gateways.
	BackbonePorts  []int
	BackbonePrefix string
	// BGPPeers are the operator's routers a BIRD-mode gateway peers with
	// over the underlay: BGP (TCP 179) and BFD (UDP 3784, 4784) from them
	// are let in.
	BGPPeers []netip.Addr
	// EBPFMark, when set, is the mark bit the eBPF firewall on the
	// WireGuard interface (dataplane/ebpffw) sets on packets it allowed:
	// the overlay chain accepts them first (clearing the bit) and judges
	// only what the program left unmarked. Zero: nftables alone.
	EBPFMark uint32
}

// Firewall manages the table.
type Firewall struct {
	nft knftables.Interface
	log *slog.Logger
	// expected rule counts per chain after the last full apply, for drift
	// detection.
	expected map[string]int
	sets     map[string]bool
	// generation reads the kernel's ruleset generation (readGeneration);
	// nil with a given knftables interface, whose rules the kernel does
	// not hold. intactAt is the generation at which the table was last
	// known to be as applied (intact: known at all): after Apply, or a
	// Check that found no drift. genFailed: the failure was logged.
	generation func(context.Context) (uint32, error)
	intactAt   uint32
	intact     bool
	genFailed  bool
}

// New returns a manager; it fails (clearly) where nftables is missing.
func New(log *slog.Logger) (*Firewall, error) {
	nft, err := knftables.New(knftables.InetFamily, Table)
	if err != nil {
		return nil, fmt.Errorf("nftables is not available (%v): this node does not enforce the policy", err)
	}
	f := NewWith(nft, log)
	f.generation = readGeneration
	return f, nil
}

// NewWith uses a given knftables interface (a fake in unit tests). Its
// Check always lists the table: the kernel's ruleset generation says
// nothing about a fake's rules.
func NewWith(nft knftables.Interface, log *slog.Logger) *Firewall {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Firewall{nft: nft, log: log}
}

func ptr[T any](v T) *T { return &v }

func setNames(name string) (v4, v6 string) { return name + "_v4", name + "_v6" }

func split(ps []netip.Prefix) (v4, v6 []string) {
	for _, p := range ps {
		if p.Addr().Is4() {
			v4 = append(v4, p.Masked().String())
		} else {
			v6 = append(v6, p.Masked().String())
		}
	}
	return v4, v6
}

// Address families of a match: nft's ip and ip6.
const (
	famIP  = "ip"
	famIP6 = "ip6"
)

// portMatch is the match of a port or protocol for packets of family
// (famIP or famIP6): "icmp" means echo requests (ping), the way the policy
// and Cilium read it, not every ICMP type; "any" matches everything (no
// match: "").
func portMatch(p netmap.PortRange, family string) string {
	switch p.Proto {
	case "icmp":
		if family == famIP6 {
			return "icmpv6 type echo-request"
		}
		return "icmp type echo-request"
	case "tcp", "udp":
		if p.From == p.To {
			return fmt.Sprintf("%s dport %d", p.Proto, p.From)
		}
		return fmt.Sprintf("%s dport %d-%d", p.Proto, p.From, p.To)
	}
	return ""
}

// ICMP the node needs whatever the policy: a node that drops neighbour
// discovery loses its IPv6 underlay, one that drops packet-too-big (IPv6)
// or fragmentation-needed (IPv4) black-holes every path with a smaller MTU.
// Connection tracking does not vouch for these: neighbour discovery and
// MLD create no connections, and an ICMP error about a flow conntrack no
// longer knows (a restart, a flush, another path) is "invalid". So they
// are accepted before the ct state rules (RFC 4890, sections 4.3-4.4).
var (
	// neighbourDiscovery goes in the input chain. Neighbour solicitations
	// and advertisements (RFC 4861) and router advertisements (the
	// underlay's default route and prefixes) are link-local by
	// construction: a hop limit of 255 proves they were not forwarded.
	// MLD queries (from link-local addresses) keep the node's
	// solicited-node groups known to snooping switches. Router
	// solicitations and redirects are not accepted: a node is no router on
	// its underlay, and a redirect could divert its WireGuard traffic.
	neighbourDiscovery = []struct{ rule, comment string }{
		{"icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept", "IPv6 neighbour discovery (hop limit 255: from this link)"},
		{"icmpv6 type nd-router-advert ip6 saddr fe80::/10 ip6 hoplimit 255 accept", "IPv6 router advertisements from this link's routers"},
		{"icmpv6 type mld-listener-query ip6 saddr fe80::/10 accept", "IPv6 multicast listener queries (snooping switches keep delivering neighbour discovery)"},
	}
	// pathMTU goes in the input and forward chains.
	pathMTU = []struct{ rule, comment string }{
		{"icmpv6 type packet-too-big accept", "path MTU discovery: IPv6 packet too big (routers never fragment IPv6)"},
		{"icmp type destination-unreachable icmp code frag-needed accept", "path MTU discovery: IPv4 fragmentation needed"},
	}
)

// Render builds the transaction that replaces the table with s, and the
// number of rules each chain gets.
func Render(tx *knftables.Transaction, s State, existingSets []string) map[string]int {
	counts := map[string]int{}
	rule := func(chain, text, comment string) {
		r := &knftables.Rule{Chain: chain, Rule: text}
		if comment != "" {
			r.Comment = ptr(comment)
		}
		tx.Add(r)
		counts[chain]++
	}
	tx.Add(&knftables.Table{Comment: ptr("StateMesh: managed by the statemesh agent; changes are reverted")})
	tx.Flush(&knftables.Table{})
	for _, c := range []struct {
		name string
		hook knftables.BaseChainHook
	}{{"input", knftables.InputHook}, {"forward", knftables.ForwardHook}} {
		tx.Add(&knftables.Chain{Name: c.name, Type: ptr(knftables.FilterType), Hook: ptr(c.hook), Priority: ptr(knftables.FilterPriority)})
	}
	tx.Add(&knftables.Chain{Name: "overlay", Comment: ptr("traffic through the mesh to this node or its pods: the policy")})

	// Sets: peers' underlay addresses, and the policy's source sets.
	want := map[string]bool{"peers_v4": true, "peers_v6": true}
	tx.Add(&knftables.Set{Name: "peers_v4", Type: "ipv4_addr", Comment: ptr("WireGuard peers' underlay addresses")})
	tx.Add(&knftables.Set{Name: "peers_v6", Type: "ipv6_addr", Comment: ptr("WireGuard peers' underlay addresses")})
	for _, a := range s.Peers {
		name := "peers_v4"
		if !a.Unmap().Is4() {
			name = "peers_v6"
		}
		tx.Add(&knftables.Element{Set: name, Key: []string{a.Unmap().String()}})
	}
	if s.Policy != nil {
		names := make([]string, 0, len(s.Policy.Sets))
		for n := range s.Policy.Sets {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			v4n, v6n := setNames(n)
			want[v4n], want[v6n] = true, true
			tx.Add(&knftables.Set{Name: v4n, Type: "ipv4_addr", Flags: []knftables.SetFlag{knftables.IntervalFlag}, Comment: ptr("members of " + n)})
			tx.Add(&knftables.Set{Name: v6n, Type: "ipv6_addr", Flags: []knftables.SetFlag{knftables.IntervalFlag}, Comment: ptr("members of " + n)})
			v4, v6 := split(s.Policy.Sets[n])
			for _, e := range v4 {
				tx.Add(&knftables.Element{Set: v4n, Key: []string{e}})
			}
			for _, e := range v6 {
				tx.Add(&knftables.Element{Set: v6n, Key: []string{e}})
			}
		}
	}
	for _, old := range existingSets {
		if !want[old] {
			tx.Delete(&knftables.Set{Name: old})
		}
	}

	// input
	rule("input", `iifname "lo" accept`, "")
	for _, r := range neighbourDiscovery {
		rule("input", r.rule, r.comment)
	}
	for _, r := range pathMTU {
		rule("input", r.rule, r.comment)
	}
	rule("input", "ct state established,related accept", "replies to this node's connections (the control channel)")
	rule("input", "ct state invalid drop", "")
	rule("input", fmt.Sprintf("iifname %q jump overlay", s.Interface), "")
	v4pods, v6pods := split(s.Pods)
	if len(v4pods) > 0 {
		rule("input", "ip saddr { "+strings.Join(v4pods, ", ")+" } accept", "this node's pods")
	}
	if len(v6pods) > 0 {
		rule("input", "ip6 saddr { "+strings.Join(v6pods, ", ")+" } accept", "this node's pods")
	}
	rule("input", fmt.Sprintf("udp dport %d ip saddr @peers_v4 accept", s.ListenPort), "underlay: WireGuard from known peers")
	rule("input", fmt.Sprintf("udp dport %d ip6 saddr @peers_v6 accept", s.ListenPort), "underlay: WireGuard from known peers")
	if s.Gateway {
		rule("input", fmt.Sprintf("udp dport %d accept", s.ListenPort), "gateway: WireGuard from anywhere (external clients roam; WireGuard ignores unknown keys)")
	}
	if len(s.BackbonePorts) > 0 {
		ports := make([]string, len(s.BackbonePorts))
		for i, p := range s.BackbonePorts {
			ports[i] = strconv.Itoa(p)
		}
		rule("input", fmt.Sprintf("udp dport { %s } accept", strings.Join(ports, ", ")), "gateway: WireGuard backbone links to the other gateways")
		rule("input", fmt.Sprintf("iifname %q accept", s.BackbonePrefix+"*"), "backbone: BGP and BFD from the other gateways, over WireGuard")
	}
	v4peers, v6peers := splitAddrs(s.BGPPeers)
	for _, f := range []struct {
		family string
		addrs  []string
	}{{"ip", v4peers}, {"ip6", v6peers}} {
		if len(f.addrs) == 0 {
			continue
		}
		from := f.family + " saddr { " + strings.Join(f.addrs, ", ") + " }"
		rule("input", from+" tcp dport 179 accept", "underlay: BGP from the operator's routers")
		rule("input", from+" udp dport { 3784, 4784 } accept", "underlay: BFD from the operator's routers")
	}
	for _, p := range s.UnderlayAllow {
		for _, m := range slices.Compact([]string{portMatch(p, famIP), portMatch(p, famIP6)}) {
			rule("input", strings.TrimSpace(m+" accept"), "underlay: allowed by the operator")
		}
	}
	rule("input", "counter drop", "underlay: nothing else reaches this node from outside the mesh")

	// forward
	rule("forward", "ct state established,related accept", "")
	for _, r := range pathMTU {
		rule("forward", r.rule, r.comment)
	}
	if len(v4pods) > 0 {
		rule("forward", fmt.Sprintf("iifname %q ip daddr { %s } jump overlay", s.Interface, strings.Join(v4pods, ", ")), "traffic to this node's pods")
	}
	if len(v6pods) > 0 {
		rule("forward", fmt.Sprintf("iifname %q ip6 daddr { %s } jump overlay", s.Interface, strings.Join(v6pods, ", ")), "traffic to this node's pods")
	}

	// overlay: the policy
	if s.Gateway {
		rule("overlay", "icmp type echo-request accept", "gateway: reachability and path-MTU probes from the mesh")
		rule("overlay", "icmpv6 type echo-request accept", "gateway: reachability and path-MTU probes from the mesh")
	}
	if s.Policy == nil {
		rule("overlay", "accept", "no policy in the mesh spec: the overlay allows all")
		return counts
	}
	if s.EBPFMark != 0 {
		rule("overlay", fmt.Sprintf("meta mark & 0x%08x == 0x%08x meta mark set meta mark & 0x%08x accept", s.EBPFMark, s.EBPFMark, ^s.EBPFMark),
			"allowed by the eBPF firewall on "+s.Interface+" (it dropped what the policy denies; what it left unmarked is judged below)")
	}
	for _, r := range s.Policy.Rules {
		v4n, v6n := setNames(r.Set)
		// A rule with "any" among its ports allows every protocol: one
		// match-all rule (portMatch has no match for "any", and without
		// this the rule rendered nothing: issue 15's lab found clients of
		// an ops-to-frontend "any" rule dropped).
		anyPort := slices.ContainsFunc(r.Ports, func(p netmap.PortRange) bool { return p.Proto == "any" })
		for _, src := range []struct{ family, match string }{{famIP, "ip saddr @" + v4n}, {famIP6, "ip6 saddr @" + v6n}} {
			if len(r.Ports) == 0 || anyPort {
				rule("overlay", src.match+" accept", r.Comment)
				continue
			}
			for _, p := range r.Ports {
				rule("overlay", strings.TrimSpace(src.match+" "+portMatch(p, src.family))+" accept", r.Comment)
			}
		}
	}
	rule("overlay", "counter drop", "default deny between segments")
	return counts
}

// StateOptions are what a node's agent adds to its map's firewall: its
// flags and the names it gives its links.
type StateOptions struct {
	// Interface overrides the map's WireGuard interface name.
	Interface string
	// UnderlayAllow are the agent's --underlay-allow ports.
	UnderlayAllow []netmap.PortRange
	// BackbonePrefix names a BIRD-mode gateway's backbone interfaces.
	BackbonePrefix string
}

// StateFor is the firewall a node's map asks for, as its agent loads it.
func StateFor(m netmap.Map, o StateOptions) State {
	s := State{Interface: m.Interface.Name, ListenPort: m.Interface.ListenPort, Policy: m.Firewall,
		Pods: m.Self.PodPrefixes, Gateway: m.Self.Role == netmap.RoleGateway, UnderlayAllow: o.UnderlayAllow}
	if o.Interface != "" {
		s.Interface = o.Interface
	}
	if rt := m.Routing; rt != nil {
		for _, l := range rt.Links {
			s.BackbonePorts = append(s.BackbonePorts, l.ListenPort)
		}
		s.BackbonePrefix = o.BackbonePrefix
		for _, x := range rt.External {
			s.BGPPeers = append(s.BGPPeers, x.Address)
		}
	}
	seen := map[netip.Addr]bool{}
	for _, p := range m.Peers {
		if ip := p.Endpoint.Addr().Unmap(); p.Endpoint.IsValid() && !seen[ip] {
			seen[ip] = true
			s.Peers = append(s.Peers, ip)
		}
	}
	slices.SortFunc(s.Peers, func(x, y netip.Addr) int { return x.Compare(y) })
	return s
}

// Script is the nft script (nft -f) that loads s on a node without
// StateMesh's table: what the agent's first Apply runs, for review.
func Script(s State) string {
	tx := knftables.NewFake(knftables.InetFamily, Table).NewTransaction()
	Render(tx, s, nil)
	return tx.String()
}

// Apply replaces the whole table with s in one transaction.
func (f *Firewall) Apply(ctx context.Context, s State) error {
	f.intact = false
	existing, err := f.nft.List(ctx, "sets")
	if err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("listing nftables sets: %w", err)
	}
	tx := f.nft.NewTransaction()
	counts := Render(tx, s, existing)
	before, beforeOK := f.readGen(ctx)
	if err := f.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("applying the nftables ruleset: %w", err)
	}
	// Read after the commit. Our transaction moved the generation on by
	// one; more means someone else committed around it (maybe to our
	// table), and the next Check lists the table.
	if after, ok := f.readGen(ctx); ok && beforeOK && after == before+1 {
		f.intact, f.intactAt = true, after
	}
	f.expected = counts
	f.sets = map[string]bool{}
	if s.Policy != nil {
		for n := range s.Policy.Sets {
			f.sets[n] = true
		}
	}
	return nil
}

// ApplySets adds and removes set members in one small transaction; sets
// the node does not use are ignored.
func (f *Firewall) ApplySets(ctx context.Context, add, del map[string][]netip.Prefix) error {
	tx := f.nft.NewTransaction()
	n := 0
	for name, ps := range del {
		if !f.sets[name] {
			continue
		}
		v4n, v6n := setNames(name)
		v4, v6 := split(ps)
		for _, e := range v4 {
			tx.Delete(&knftables.Element{Set: v4n, Key: []string{e}})
			n++
		}
		for _, e := range v6 {
			tx.Delete(&knftables.Element{Set: v6n, Key: []string{e}})
			n++
		}
	}
	for name, ps := range add {
		if !f.sets[name] {
			continue
		}
		v4n, v6n := setNames(name)
		v4, v6 := split(ps)
		for _, e := range v4 {
			tx.Add(&knftables.Element{Set: v4n, Key: []string{e}})
			n++
		}
		for _, e := range v6 {
			tx.Add(&knftables.Element{Set: v6n, Key: []string{e}})
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return f.nft.Run(ctx, tx)
}

// ErrDrift reports that the table differs from what was applied.
var ErrDrift = errors.New("nftables table changed behind the agent's back")

// Check compares the table's chains with what was applied: a missing
// table or chain, or a rule count that differs, is drift.
//
// While the kernel's ruleset generation is the one at which the table was
// last known intact, nothing in the namespace has changed and Check is one
// netlink read; otherwise (or when the generation cannot be read) it lists
// the table with nft.
func (f *Firewall) Check(ctx context.Context) error {
	if f.expected == nil {
		return nil
	}
	// Read before listing: a change after this read moves the generation
	// on, and the next Check lists again.
	gen, genOK := f.readGen(ctx)
	if genOK && f.intact && gen == f.intactAt {
		return nil
	}
	f.intact = false
	// One listing of the whole table (without set elements).
	rules, err := f.nft.ListRules(ctx, "")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDrift, err)
	}
	got := map[string]int{}
	for _, r := range rules {
		got[r.Chain]++
	}
	for chain, want := range f.expected {
		if got[chain] != want {
			return fmt.Errorf("%w: chain %s has %d rules, want %d", ErrDrift, chain, got[chain], want)
		}
	}
	if genOK {
		f.intact, f.intactAt = true, gen
	}
	return nil
}

// readGen reads the ruleset generation; ok is false without a reader or
// when the read fails (logged once, at debug: checks then list the table
// every time).
func (f *Firewall) readGen(ctx context.Context) (gen uint32, ok bool) {
	if f.generation == nil {
		return 0, false
	}
	gen, err := f.generation(ctx)
	if err != nil {
		if !f.genFailed {
			f.genFailed = true
			f.log.Debug("nftables ruleset generation unreadable; drift checks list the table every time", "err", err)
		}
		return 0, false
	}
	return gen, true
}

// Track makes sure connection tracking sees this node's connections from
// their first packet, before the first policy is enforced: conntrack picks
// up a connection it met mid-stream without its window scaling, judges
// the next large segments out of window (invalid), and the enforcing
// ruleset drops them, stalling the control channel for a TCP backoff. An
// existing table (the last enforced policy) is left as it is; otherwise a
// table that accepts everything and only tracks is created.
func (f *Firewall) Track(ctx context.Context) error {
	if _, err := f.nft.List(ctx, "chains"); err == nil {
		return nil
	} else if !knftables.IsNotFound(err) {
		return fmt.Errorf("listing nftables chains: %w", err)
	}
	tx := f.nft.NewTransaction()
	tx.Add(&knftables.Table{Comment: ptr("StateMesh: managed by the statemesh agent; changes are reverted")})
	tx.Add(&knftables.Chain{Name: "input", Type: ptr(knftables.FilterType), Hook: ptr(knftables.InputHook), Priority: ptr(knftables.FilterPriority)})
	tx.Add(&knftables.Rule{Chain: "input", Rule: "ct state established,related accept",
		Comment: ptr("tracking only, until the agent has its first map")})
	if err := f.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("creating the tracking table: %w", err)
	}
	return nil
}

// Delete removes the table (lab down, uninstall).
func (f *Firewall) Delete(ctx context.Context) error {
	tx := f.nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	err := f.nft.Run(ctx, tx)
	if knftables.IsNotFound(err) {
		return nil
	}
	return err
}

// splitAddrs splits addresses by family, as nft literals, sorted.
func splitAddrs(as []netip.Addr) (v4, v6 []string) {
	for _, a := range as {
		if a.Unmap().Is4() {
			v4 = append(v4, a.Unmap().String())
		} else {
			v6 = append(v6, a.String())
		}
	}
	slices.Sort(v4)
	slices.Sort(v6)
	return v4, v6
}
