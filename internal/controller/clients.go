package controller

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/topology"
)

const (
	prefixClients   = "clients/"
	prefixClientsGW = "clientsgw/"
)

func clientKey(name string) string           { return prefixClients + name }
func clientsGatewayKey(region string) string { return prefixClientsGW + region }

// ClientsGatewayRecord pins a region's clients gateway: the gateway its
// clients' wg-quick files name. It stays the clients gateway while it is
// an active gateway of the region, healthy or not, so a health flap does
// not move the clients' peers to a gateway their files do not name (which
// cut them off until they fetched a new file). It moves when an operator
// adds a client or asks for a client's configuration while it is
// unhealthy and another gateway is healthy; a pinned gateway that leaves
// the mesh stops serving at once (rendezvous hashing picks until the next
// pin).
type ClientsGatewayRecord struct {
	Gateway string    `json:"gateway"`
	Since   time.Time `json:"since"`
	// Was is the gateway pinned before ("" for the region's first pin).
	Was string `json:"was,omitempty"`
}

// ClientRecord is a registered external client. Its private key was never
// here.
type ClientRecord struct {
	Name      string     `json:"name"`
	Region    string     `json:"region"`
	Segment   string     `json:"segment"`
	PublicKey netmap.Key `json:"publicKey"`
	IPv4      netip.Addr `json:"ipv4"`
	IPv6      netip.Addr `json:"ipv6,omitzero"`
	CreatedAt time.Time  `json:"createdAt"`
}

func (r *ClientRecord) topo() topology.Client {
	return topology.Client{Name: r.Name, Region: r.Region, Segment: r.Segment, PublicKey: r.PublicKey, IPv4: r.IPv4, IPv6: r.IPv6}
}

// clientView is a record as the API shows it. Callers hold c.mu.
func (c *Controller) clientView(r *ClientRecord) api.Client {
	v := api.Client{Name: r.Name, Region: r.Region, Segment: r.Segment, PublicKey: r.PublicKey, AddressIPv4: r.IPv4.String(), CreatedAt: r.CreatedAt}
	if r.IPv6.IsValid() {
		v.AddressIPv6 = r.IPv6.String()
	}
	if c.ix != nil {
		v.Gateway = c.ix.ClientsGateway(r.Region)
	}
	return v
}

// nthHost returns the i-th address of a prefix, or false past its end.
func nthHost(p netip.Prefix, i int) (netip.Addr, bool) {
	a := p.Masked().Addr()
	for range i {
		a = a.Next()
		if !p.Contains(a) {
			return netip.Addr{}, false
		}
	}
	return a, p.Contains(a)
}

// AddClient registers an external client: it takes the lowest free address
// of its segment's block of the region's clients range, and the region's
// clients gateway gets it as a peer.
func (c *Controller) AddClient(ctx context.Context, req api.AddClientRequest) (api.ClientConfig, error) {
	if !spec.IsDNSLabel(req.Name) {
		return api.ClientConfig{}, apiErr(api.CodeInvalidArgument, "client name %q is not a DNS label (lowercase letters, digits, '-')", req.Name)
	}
	if req.PublicKey.IsZero() {
		return api.ClientConfig{}, apiErr(api.CodeInvalidArgument, "publicKey is required")
	}
	if err := checkPublicKey(req.PublicKey); err != nil {
		return api.ClientConfig{}, err
	}
	c.mu.RLock()
	pl, pol, ix := c.plan, c.segPolicy, c.ix
	var gw, pinned string
	if ix != nil {
		gw, pinned = ix.ClientsGatewayToPin(req.Region), c.clientsGW[req.Region]
	}
	c.mu.RUnlock()
	if pl == nil {
		return api.ClientConfig{}, apiErr(api.CodeNoSpec, "no spec has been applied")
	}
	pr, ok := pl.Region(req.Region)
	if !ok {
		return api.ClientConfig{}, apiErr(api.CodeInvalidArgument, "no region %q in the mesh", req.Region)
	}
	segs := pol.ClientSegments()
	if len(segs) == 0 {
		return api.ClientConfig{}, apiErr(api.CodeInvalidArgument, "the policy has no clients segment: add a segment with clients: true to policy.segments")
	}
	if req.Segment == "" {
		if len(segs) > 1 {
			return api.ClientConfig{}, apiErr(api.CodeInvalidArgument, "give the client's segment: one of %s", strings.Join(segs, ", "))
		}
		req.Segment = segs[0]
	}
	if !slices.Contains(segs, req.Segment) {
		return api.ClientConfig{}, apiErr(api.CodeInvalidArgument, "segment %q does not take clients (clients segments: %s)", req.Segment, strings.Join(segs, ", "))
	}
	if gw == "" {
		return api.ClientConfig{}, apiErr(api.CodeUnavailable, "region %s has no gateway yet to serve clients", req.Region)
	}
	b4, _ := pol.ClientBlock(pr.ClientsIPv4, req.Segment)
	b6, has6 := pol.ClientBlock(pr.ClientsIPv6, req.Segment)
	rec := ClientRecord{Name: req.Name, Region: req.Region, Segment: req.Segment, PublicKey: req.PublicKey, CreatedAt: c.cfg.Now()}
	rev, err := c.st.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Get(clientKey(req.Name)); err == nil {
			return apiErr(api.CodeAlreadyExists, "client %q exists (remove it first to issue a new configuration)", req.Name)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		kvs, err := tx.List(prefixClients)
		if err != nil {
			return err
		}
		used := map[netip.Addr]bool{}
		for _, kv := range kvs {
			o, err := decode[ClientRecord](kv.Value)
			if err != nil {
				return err
			}
			if o.PublicKey == req.PublicKey {
				return apiErr(api.CodeAlreadyExists, "client %q already uses this public key", o.Name)
			}
			used[o.IPv4] = true
		}
		// Skip the block's first address; the last is left as well (a /24
		// then reads like a LAN).
		for i := 1; ; i++ {
			a, ok := nthHost(b4, i)
			if !ok || !b4.Contains(a.Next()) {
				return apiErr(api.CodeConflict, "segment %s's client block %s in %s is full", req.Segment, b4, req.Region)
			}
			if !used[a] {
				rec.IPv4 = a
				if has6 {
					rec.IPv6, _ = nthHost(b6, i)
				}
				break
			}
		}
		if err := claimWGKey(tx, rec.PublicKey, clientOwner(rec.Name)); err != nil {
			return err
		}
		if gw != pinned {
			if err := c.pinClientsGatewayTx(tx, req.Region, gw); err != nil {
				return err
			}
		}
		return tx.Put(clientKey(req.Name), encode(rec))
	})
	if err != nil {
		return api.ClientConfig{}, err
	}
	c.log.Info("client added", "client", rec.Name, "region", rec.Region, "segment", rec.Segment, "address", rec.IPv4, "gateway", gw)
	if err := c.WaitRevision(ctx, rev); err != nil {
		return api.ClientConfig{}, err
	}
	return c.clientConfig(rec.Name)
}

// pinClientsGatewayTx pins region's clients gateway to gw in tx (see
// ClientsGatewayRecord).
func (c *Controller) pinClientsGatewayTx(tx store.Tx, region, gw string) error {
	rec := ClientsGatewayRecord{Gateway: gw, Since: c.cfg.Now()}
	switch kv, err := tx.Get(clientsGatewayKey(region)); {
	case err == nil:
		if old, err := decode[ClientsGatewayRecord](kv.Value); err == nil {
			if old.Gateway == gw {
				return nil
			}
			rec.Was = old.Gateway
		}
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	return tx.Put(clientsGatewayKey(region), encode(rec))
}

// ClientConfig returns what a client's WireGuard configuration needs: its
// peer is the region's clients gateway. Asked for while that gateway is
// unhealthy and another gateway of the region is healthy, it first moves
// the region's clients to the healthy one (ClientsGatewayRecord): the
// operator gets a file that works; the region's other clients must then
// fetch theirs again (the controller's events say so).
func (c *Controller) ClientConfig(ctx context.Context, name string) (api.ClientConfig, error) {
	c.mu.RLock()
	var region, gw, pinned string
	if r, ok := c.clients[name]; ok && c.ix != nil {
		region = r.Region
		gw, pinned = c.ix.ClientsGatewayToPin(region), c.clientsGW[region]
	}
	c.mu.RUnlock()
	if gw != "" && gw != pinned {
		rev, err := c.st.Update(ctx, func(tx store.Tx) error {
			if _, err := tx.Get(clientKey(name)); err != nil {
				if errors.Is(err, store.ErrNotFound) {
					return apiErr(api.CodeNotFound, "no client %q", name)
				}
				return err
			}
			return c.pinClientsGatewayTx(tx, region, gw)
		})
		if err != nil {
			return api.ClientConfig{}, err
		}
		if err := c.WaitRevision(ctx, rev); err != nil {
			return api.ClientConfig{}, err
		}
	}
	return c.clientConfig(name)
}

// clientConfig is ClientConfig without moving the clients gateway.
func (c *Controller) clientConfig(name string) (api.ClientConfig, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	r, ok := c.clients[name]
	if !ok {
		return api.ClientConfig{}, apiErr(api.CodeNotFound, "no client %q", name)
	}
	if c.ix == nil {
		return api.ClientConfig{}, apiErr(api.CodeNoSpec, "no spec has been applied")
	}
	m, ok := c.ix.ClientMap(name)
	if !ok || len(m.Peers) != 1 {
		return api.ClientConfig{}, apiErr(api.CodeUnavailable, "region %s has no gateway to serve client %q", r.Region, name)
	}
	p := m.Peers[0]
	out := api.ClientConfig{Client: c.clientView(r), MTU: m.Interface.MTU, PeerName: p.Name, PeerPublicKey: p.PublicKey,
		PeerEndpoint: p.Endpoint.String(), PersistentKeepalive: p.PersistentKeepalive}
	for _, a := range m.Interface.Addresses {
		out.Addresses = append(out.Addresses, a.String())
	}
	for _, a := range p.AllowedIPs {
		out.AllowedIPs = append(out.AllowedIPs, a.String())
	}
	return out, nil
}

// Clients lists the registered clients.
func (c *Controller) Clients() []api.Client {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := []api.Client{}
	for _, r := range c.clients {
		out = append(out, c.clientView(r))
	}
	slices.SortFunc(out, func(a, b api.Client) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// RemoveClient revokes a client: its gateway drops the peer.
func (c *Controller) RemoveClient(ctx context.Context, name string) error {
	rev, err := c.st.Update(ctx, func(tx store.Tx) error {
		kv, err := tx.Get(clientKey(name))
		if errors.Is(err, store.ErrNotFound) {
			return apiErr(api.CodeNotFound, "no client %q", name)
		} else if err != nil {
			return err
		}
		if r, err := decode[ClientRecord](kv.Value); err == nil {
			if err := releaseWGKey(tx, r.PublicKey, clientOwner(name)); err != nil {
				return err
			}
		}
		return tx.Delete(clientKey(name))
	})
	if err != nil {
		return err
	}
	c.log.Info("client removed", "client", name)
	return c.WaitRevision(ctx, rev)
}

// applyClientLocked follows a client record's change.
func (c *Controller) applyClientLocked(key string, value []byte, deleted bool, rev int64) []topology.Change {
	name := strings.TrimPrefix(key, prefixClients)
	if deleted {
		if _, had := c.clients[name]; had && rev > 0 {
			c.eventLocked("client", name, "client revoked")
		}
		delete(c.clients, name)
		if c.ix != nil && rev > 0 {
			return c.ix.RemoveClient(name)
		}
		return nil
	}
	r, err := decode[ClientRecord](value)
	if err != nil {
		c.log.Error("undecodable client record", "key", key, "err", err)
		return nil
	}
	if _, had := c.clients[name]; !had && rev > 0 {
		c.eventLocked("client", name, "client added in %s (segment %s, %s)", r.Region, r.Segment, r.IPv4)
	}
	c.clients[name] = &r
	if c.ix != nil && rev > 0 {
		ch, err := c.ix.UpsertClient(r.topo())
		if err != nil {
			c.log.Warn("client outside the plan", "client", name, "err", err)
		}
		return ch
	}
	return nil
}

// applyClientsGatewayLocked follows a region's clients gateway pin.
func (c *Controller) applyClientsGatewayLocked(key string, value []byte, deleted bool, rev int64) []topology.Change {
	region := strings.TrimPrefix(key, prefixClientsGW)
	var gw string
	if !deleted {
		r, err := decode[ClientsGatewayRecord](value)
		if err != nil {
			c.log.Error("undecodable clients gateway record", "key", key, "err", err)
			return nil
		}
		gw = r.Gateway
	}
	was := c.clientsGW[region]
	if gw == "" {
		delete(c.clientsGW, region)
	} else {
		c.clientsGW[region] = gw
	}
	if c.ix == nil || rev <= 0 || gw == was {
		return nil
	}
	c.log.Info("clients gateway pinned", "region", region, "gateway", gw, "was", was)
	if was != "" {
		c.eventLocked("clients-gateway", region, "clients of %s are served by %s (was %s): a client whose file names %s needs its configuration again (statemesh client config NAME)", region, gw, was, was)
	}
	return c.ix.PinClientsGateway(region, gw)
}
