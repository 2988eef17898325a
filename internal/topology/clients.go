package topology

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/policy"
)

// Client is an external WireGuard client (an operator's laptop). It peers
// with one gateway of its region, the region's clients gateway; the other
// gateways, the region's nodes and other regions' gateways route the
// region's clients range to that gateway. What a client may reach is the
// policy's business: its segment's block of the clients range is a member
// of the segment's firewall sets on every node.
type Client struct {
	Name      string
	Region    string
	Segment   string
	PublicKey netmap.Key
	IPv4      netip.Addr
	IPv6      netip.Addr
}

// ClientPeerPrefix prefixes client names in maps, so that they never
// collide with node names.
const ClientPeerPrefix = "client:"

func (c *Client) prefixes() []netip.Prefix {
	var ps []netip.Prefix
	if c.IPv4.IsValid() {
		ps = append(ps, netip.PrefixFrom(c.IPv4, 32))
	}
	if c.IPv6.IsValid() {
		ps = append(ps, netip.PrefixFrom(c.IPv6, 128))
	}
	return ps
}

func (c *Client) entry() netmap.Peer {
	return netmap.Peer{Name: ClientPeerPrefix + c.Name, PublicKey: c.PublicKey, AllowedIPs: netmap.SortPrefixes(c.prefixes()),
		Role: "client", Region: c.Region}
}

// clientsGateway is the gateway that serves the region's external clients:
// the pinned one while it is an active gateway of the region, healthy or
// not (a client's stock wg-quick file names one gateway; moving its peer
// elsewhere cuts it off until it fetches a new file, so a flap must not
// move it), else the one rendezvous hashing picks among the healthy.
func (r *region) clientsGateway() string {
	if g := r.gateway(r.clientsPin); g != nil && g.active() {
		return g.Name
	}
	return Rendezvous("clients", r.candidates())
}

// gateway returns the region's gateway of that name, or nil.
func (r *region) gateway(name string) *Node {
	for _, g := range r.gateways {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// PinClientsGateway makes gw the region's clients gateway for as long as it
// is an active gateway of the region ("" unpins: rendezvous hashing among
// the healthy gateways decides), and returns the changes.
func (ix *Index) PinClientsGateway(region, gw string) []Change {
	r, ok := ix.regions[region]
	if !ok || r.clientsPin == gw {
		return nil
	}
	r.clientsPin = gw
	return ix.refreshRegion(r)
}

// ClientsGatewayToPin is the gateway a region's clients should be pinned to
// when an operator asks for a client's configuration: the clients gateway
// while it is healthy (or while no gateway of the region is), else the
// healthy gateway rendezvous hashing picks. "" when the region has no
// active gateway.
func (ix *Index) ClientsGatewayToPin(region string) string {
	r, ok := ix.regions[region]
	if !ok {
		return ""
	}
	cur := r.clientsGateway()
	if g := r.gateway(cur); g == nil || g.Healthy {
		return cur
	}
	// candidates() are the healthy gateways, or every one when none is.
	if to := r.gateway(Rendezvous("clients", r.candidates())); to != nil && to.Healthy {
		return to.Name
	}
	return cur
}

// ClientsGateway returns the name of the gateway serving a region's
// clients ("" when the region has no gateway).
func (ix *Index) ClientsGateway(regionName string) string {
	r, ok := ix.regions[regionName]
	if !ok {
		return ""
	}
	return r.clientsGateway()
}

// clientRanges is the region's clients range(s): what its clients gateway
// carries for everyone else.
func (ix *Index) clientRanges(region string) []netip.Prefix {
	pr, ok := ix.plan.Region(region)
	if !ok {
		return nil
	}
	var ps []netip.Prefix
	for _, p := range []netip.Prefix{pr.ClientsIPv4, pr.ClientsIPv6} {
		if p.IsValid() {
			ps = append(ps, p)
		}
	}
	return ps
}

// clientSets puts every clients segment's blocks (of every region) into
// the segment's firewall sets. They are static: which client holds which
// address does not change any node's firewall.
func (ix *Index) clientSets() {
	if ix.policy == nil || ix.plan == nil {
		return
	}
	for _, seg := range ix.policy.ClientSegments() {
		for _, pr := range ix.plan.Regions {
			var blocks []netip.Prefix
			for _, cp := range []netip.Prefix{pr.ClientsIPv4, pr.ClientsIPv6} {
				if b, ok := ix.policy.ClientBlock(cp, seg); ok {
					blocks = append(blocks, b)
				}
			}
			for _, s := range []string{policy.SetName(seg, false), policy.SetName(seg, true)} {
				if ix.sets[s] == nil {
					ix.sets[s] = map[string][]netip.Prefix{}
				}
				ix.sets[s][ClientPeerPrefix+"*/"+pr.Name] = blocks
			}
		}
	}
}

// UpsertClient adds or updates a client and returns the changes: only its
// region's clients gateway sees clients.
func (ix *Index) UpsertClient(c Client) ([]Change, error) {
	r, ok := ix.regions[c.Region]
	if !ok {
		return nil, ErrUnknownCluster{Region: c.Region}
	}
	if ix.clients == nil {
		ix.clients = map[string]*Client{}
	}
	old, had := ix.clients[c.Name]
	ix.clients[c.Name] = &c
	gw := r.clientsGateway()
	var changes []Change
	if had && old.Region != c.Region {
		if og := ix.regions[old.Region].clientsGateway(); og != "" {
			changes = append(changes, Change{Audience: Audience{Scopes: []Scope{{Kind: ScopeNode, Node: og}}},
				Delta: netmap.Delta{Remove: []string{ClientPeerPrefix + c.Name}}})
		}
	}
	if gw != "" {
		changes = append(changes, Change{Audience: Audience{Scopes: []Scope{{Kind: ScopeNode, Node: gw}}},
			Delta: netmap.Delta{Upsert: []netmap.Peer{c.entry()}}})
	}
	return changes, nil
}

// RemoveClient deletes a client and returns the changes.
func (ix *Index) RemoveClient(name string) []Change {
	c, ok := ix.clients[name]
	if !ok {
		return nil
	}
	delete(ix.clients, name)
	gw := ix.regions[c.Region].clientsGateway()
	if gw == "" {
		return nil
	}
	return []Change{{Audience: Audience{Scopes: []Scope{{Kind: ScopeNode, Node: gw}}},
		Delta: netmap.Delta{Remove: []string{ClientPeerPrefix + name}}}}
}

// Clients lists a region's clients ("" for all), sorted by name.
func (ix *Index) Clients(region string) []Client {
	var out []Client
	for _, c := range ix.clients {
		if region == "" || c.Region == region {
			out = append(out, *c)
		}
	}
	slices.SortFunc(out, func(a, b Client) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// clientPeers are the peers a clients gateway has for its region's clients.
func (ix *Index) clientPeers(region string) []netmap.Peer {
	var out []netmap.Peer
	for _, c := range ix.Clients(region) {
		out = append(out, c.entry())
	}
	return out
}

// ClientMap is what an external client needs: its addresses and its one
// peer, the region's clients gateway, carrying every overlay and pod
// supernet of the mesh. ok is false when the client is unknown or its
// region has no gateway.
func (ix *Index) ClientMap(name string) (netmap.Map, bool) {
	c, ok := ix.clients[name]
	if !ok {
		return netmap.Map{}, false
	}
	r := ix.regions[c.Region]
	g, ok := ix.nodes[r.clientsGateway()]
	if !ok {
		return netmap.Map{}, false
	}
	ep := g.PublicEndpoint
	if !ep.IsValid() {
		ep = g.Endpoint
	}
	m := netmap.Map{
		Self:      netmap.Self{Name: ClientPeerPrefix + c.Name, Region: c.Region, Role: "client"},
		Interface: netmap.Interface{Name: ix.opts.InterfaceName, Addresses: netmap.SortPrefixes(c.prefixes()), MTU: ix.clientMTU(c.Region)},
		Peers: []netmap.Peer{{Name: g.Name, PublicKey: g.PublicKey, Endpoint: ep, AllowedIPs: netmap.SortPrefixes(slices.Clone(ix.supernet)),
			PersistentKeepalive: ix.opts.GatewayKeepalive, Role: g.Role, Region: g.Region}},
		Routes: slices.Clone(ix.supernet),
	}
	return m.Normalize(), true
}

// clientMTU is the operator role's WireGuard MTU in the region: clients
// reach the mesh over networks like operators' (a VPN, home Wi-Fi).
func (ix *Index) clientMTU(region string) int {
	if pr, ok := ix.plan.Region(region); ok {
		if l, ok := pr.Role(netmap.RoleOperator); ok {
			return l.WireGuardMTU
		}
	}
	return 1420
}
