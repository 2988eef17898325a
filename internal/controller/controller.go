// Package controller is StateMesh's source of truth and dynamic peer
// manager: it holds the spec and the plan, admits nodes (join tokens, IPAM,
// certificates), keeps an in-memory registry that follows the store, turns
// every store change into the few network-map deltas it causes (package
// topology) and fans them out to the nodes' watch streams.
//
// Data flows one way: every write goes to the store in a transaction; the
// registry learns of it only through the store's watch, so several
// replicas sharing one etcd converge on the same state and compute the same
// deltas, each for the nodes streaming from it.
//
// Locking: mu guards the registry (index, records, revision) and the hub's
// subscriber sets. The watch loop holds it while applying an event and
// enqueueing the resulting frames, so a subscriber that takes its snapshot
// under mu misses nothing and sees nothing twice.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/policy"
	"github.com/statemesh/statemesh/internal/secrets"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/topology"
)

// Store is what the controller needs of a store backend.
type Store interface {
	Get(ctx context.Context, key string) (store.KV, error)
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Update(ctx context.Context, fn func(tx store.Tx) error) (int64, error)
	Watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResponse
}

// Config configures a controller.
type Config struct {
	Store  Store
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// SlotGrace is how long a removed node's addresses stay reserved.
	SlotGrace time.Duration
	// HeartbeatTimeout is how long a gateway may go without a heartbeat
	// before it is marked unhealthy; HealthInterval how often that is
	// checked.
	HeartbeatTimeout time.Duration
	HealthInterval   time.Duration
	// CertTTL is the lifetime of node certificates.
	CertTTL time.Duration
	// HistoryLen is how many changes are kept for watch resumption.
	HistoryLen int
	// QueueLen bounds each watch stream's queue of frames.
	QueueLen int
	// Topology options (interface name, port).
	Topology topology.Options
	// Keyring seals secrets at rest (the CA key). Without one they are
	// stored in clear (tests only; the daemon always has one).
	Keyring *secrets.Keyring
	// TPM, when set, is the controller's own TPM: it answers agents'
	// challenges (mutual aTLS, spec attestation.controller).
	TPM TPM
	// StoreProbeEvery is how often the store is probed (default 1s); a
	// replica whose store has not answered for StoreFenceAfter (default
	// 5s) ends its watch streams and refuses new ones until it answers
	// again, so nodes resume on a replica that knows the mesh.
	StoreProbeEvery time.Duration
	StoreFenceAfter time.Duration
	// ResumeFromHistoryOnly answers a resuming stream from the replica's
	// history alone, ignoring the persisted map revisions (maprev.go): the
	// behaviour before them, kept as benchmarks' baseline. The markers are
	// written either way.
	ResumeFromHistoryOnly bool
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.SlotGrace == 0 {
		c.SlotGrace = 10 * time.Minute
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = 3 * time.Second
	}
	if c.StoreProbeEvery == 0 {
		c.StoreProbeEvery = time.Second
	}
	if c.StoreFenceAfter == 0 {
		c.StoreFenceAfter = 5 * time.Second
	}
	if c.HealthInterval == 0 {
		c.HealthInterval = 250 * time.Millisecond
	}
	if c.CertTTL == 0 {
		c.CertTTL = 24 * time.Hour
	}
	if c.HistoryLen == 0 {
		c.HistoryLen = 8192
	}
	if c.QueueLen == 0 {
		c.QueueLen = 512
	}
}

// Controller is one controller replica.
type Controller struct {
	cfg Config
	log *slog.Logger
	st  Store
	ca  *CA

	mu       sync.RWMutex
	rev      int64
	revWait  chan struct{} // closed and replaced whenever rev advances
	specYAML string
	mesh     *spec.Mesh
	plan     *plan.Plan
	// attestPolicy is the verifier's policy from the spec (nil: off);
	// reattest its re-attestation interval.
	attestPolicy *attest.Policy
	reattest     time.Duration
	// segPolicy is the segmentation policy from the spec (nil: none).
	segPolicy *policy.Policy
	ix        *topology.Index
	nodes     map[string]*NodeRecord
	clients   map[string]*ClientRecord
	// clientsGW: each region's pinned clients gateway (clients.go).
	clientsGW map[string]string
	health    map[string]HealthRecord
	slots     map[string]slotTable // region/cluster -> slot -> held or released
	status    map[string]statusEntry
	// labels caches each region/cluster's labels (cluster's over
	// region's): the labels of every node without labels of its own, shared
	// (read-only) instead of a copy per node. Reset when the spec changes.
	labels map[[2]string]map[string]string
	// BIRD mode: each gateway's region peers' BFD view of it (gateway →
	// reporter → down) and the resulting verdict (bfdvotes.go).
	bfdVotes map[string]map[string]bool
	// vouchLogged: silent gateways kept designated by their region's BFD
	// (logged once per silence).
	vouchLogged map[string]bool
	bfdDown     map[string]bool
	// backends' status (Netmaker, beside the controller: SetBackends) and
	// the kick that tells them a node changed (BackendChanges).
	backends    []api.BackendStatus
	backendKick chan struct{}
	// fenced is set while the store does not answer (storeMonitor).
	fenced atomic.Bool
	// lastWrite is when a stream last wrote queued frames (UnixNano).
	lastWrite atomic.Int64
	hub       *hub
	// mapRevs are the scopes' last map-relevant revisions (maprev.go);
	// loadedRevs what they were at loadRev, the revision the registry was
	// last loaded at (history starts there).
	mapRevs    *mapRevs
	loadedRevs *mapRevs
	loadRev    int64
	// unmarked counts revisions that published changes no marker covered.
	unmarked atomic.Int64
	metrics  *metrics
	events   []api.Event

	ready chan struct{}
	// started is when Run began: gateways get a heartbeat timeout's grace
	// from it, so a restarted controller does not declare every gateway
	// dead because nobody heartbeated while it was down.
	started time.Time
	// self answers agents' attestation of this controller (its TPM).
	self *selfAttest
}

// New returns a controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	cfg.setDefaults()
	if cfg.Store == nil {
		return nil, errors.New("controller: no store")
	}
	c := &Controller{
		cfg:         cfg,
		log:         cfg.Logger,
		revWait:     make(chan struct{}),
		nodes:       map[string]*NodeRecord{},
		clients:     map[string]*ClientRecord{},
		clientsGW:   map[string]string{},
		health:      map[string]HealthRecord{},
		slots:       map[string]slotTable{},
		status:      map[string]statusEntry{},
		bfdVotes:    map[string]map[string]bool{},
		bfdDown:     map[string]bool{},
		vouchLogged: map[string]bool{},
		backendKick: make(chan struct{}, 1),
		hub:         newHub(cfg.HistoryLen, cfg.QueueLen),
		mapRevs:     newMapRevs(),
		ready:       make(chan struct{}),
	}
	if cfg.TPM != nil {
		c.self = &selfAttest{tpm: cfg.TPM, window: BatchWindow}
	}
	c.metrics = newMetrics(c)
	c.st = markingStore{timedStore{Store: cfg.Store, h: c.metrics.storeOps}}
	return c, nil
}

// Bootstrap creates the CA (and, when none exists, an admin credential) in
// the store, or loads them. It returns the admin token when it created one:
// the only time it exists in plain text.
func (c *Controller) Bootstrap(ctx context.Context, mesh string) (adminToken string, err error) {
	now := c.cfg.Now()
	var ca *CA
	var admin string
	_, err = c.st.Update(ctx, func(tx store.Tx) error {
		ca, admin = nil, ""
		kv, err := tx.Get(keyCA)
		switch {
		case errors.Is(err, store.ErrNotFound):
			var rec CARecord
			ca, rec, err = newCA(mesh, now)
			if err != nil {
				return err
			}
			if rec, err = c.sealCA(rec); err != nil {
				return err
			}
			if err := tx.Put(keyCA, encode(rec)); err != nil {
				return err
			}
			// A new store: every key will be indexed as it enrolls.
			if err := tx.Put(keyWGIndexed, []byte("1")); err != nil {
				return err
			}
		case err != nil:
			return err
		default:
			rec, err := decode[CARecord](kv.Value)
			if err != nil {
				return fmt.Errorf("decoding CA record: %w", err)
			}
			clear, err := c.openCA(rec)
			if err != nil {
				return err
			}
			if ca, err = loadCA(clear); err != nil {
				return err
			}
			// Seal a clear key, or re-seal with a rotated primary key.
			if resealed, err := c.sealCA(clear); err == nil && c.cfg.Keyring != nil {
				if id, _ := secrets.KeyID(rec.KeySealed); rec.KeyPEM != "" || id != c.cfg.Keyring.Primary() {
					if err := tx.Put(keyCA, encode(resealed)); err != nil {
						return err
					}
				}
			}
		}
		// A store without map revisions (new, or written by an older
		// version): from here on every map-relevant write is marked; what
		// came before is older than this marker.
		if _, err := tx.Get(keyMapRevAll); errors.Is(err, store.ErrNotFound) {
			if err := tx.Put(keyMapRevAll, []byte("1")); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		admins, err := tx.List(prefixAdmin)
		if err != nil {
			return err
		}
		if len(admins) == 0 {
			rec, token, err := newAdminCredential(now)
			if err != nil {
				return err
			}
			admin = token
			return tx.Put(prefixAdmin+rec.ID, encode(rec))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("bootstrapping CA and admin credential: %w", err)
	}
	c.ca = ca
	return admin, nil
}

// CA returns the controller's CA (after Bootstrap).
func (c *Controller) CA() *CA { return c.ca }

// Ready is closed once the registry has loaded the store.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

// Run loads the registry from the store and follows the store's watch
// until ctx ends. It also runs the gateway health monitor.
func (c *Controller) Run(ctx context.Context) error {
	if c.ca == nil {
		return errors.New("controller: Run before Bootstrap")
	}
	c.started = c.cfg.Now()
	kvs, rev, err := c.st.List(ctx, "")
	if err != nil {
		return fmt.Errorf("loading registry: %w", err)
	}
	c.mu.Lock()
	c.loadLocked(kvs)
	c.setRevLocked(rev)
	c.hub.floor = rev
	c.loadedMapRevsLocked(rev)
	nodes := len(c.nodes)
	c.mu.Unlock()
	c.log.Info("registry loaded", "revision", rev, "nodes", nodes)
	missing := c.missingWGKeys(kvs)
	kvs = nil
	close(c.ready)
	if missing != nil {
		go func() {
			if err := c.indexWGKeys(ctx, missing); err != nil && ctx.Err() == nil {
				c.log.Error("indexing the WireGuard keys of older records (the next start retries)", "err", err)
			}
		}()
	}

	go c.healthMonitor(ctx)
	go c.storeMonitor(ctx)
	go c.sessionSweeper(ctx)
	for {
		if err := c.follow(ctx, rev); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, store.ErrCompacted) {
				// Fell too far behind: reload everything.
				c.log.Warn("store history compacted; reloading registry", "revision", rev)
				kvs, r, lerr := c.st.List(ctx, "")
				if lerr != nil {
					return fmt.Errorf("reloading registry: %w", lerr)
				}
				c.reload(kvs, r)
				rev = r
				continue
			}
			c.log.Warn("store watch ended; resuming", "err", err, "revision", c.Revision())
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(500 * time.Millisecond):
			}
		}
		rev = c.Revision()
	}
}

func (c *Controller) follow(ctx context.Context, from int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range c.st.Watch(wctx, "", from) {
		if resp.Err != nil {
			return resp.Err
		}
		c.mu.Lock()
		// Markers first: the changes of this revision are checked
		// against them as they are published.
		for _, ev := range resp.Events {
			if ev.Type != store.EventDelete {
				c.mapRevs.set(ev.KV.Key, resp.Revision)
			}
		}
		for _, ev := range resp.Events {
			c.applyLocked(ev.KV.Key, ev.KV.Value, ev.Type == store.EventDelete, resp.Revision)
		}
		c.setRevLocked(resp.Revision)
		c.mu.Unlock()
	}
	return ctx.Err()
}

func (c *Controller) reload(kvs []store.KV, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes = map[string]*NodeRecord{}
	c.clients = map[string]*ClientRecord{}
	c.clientsGW = map[string]string{}
	c.health = map[string]HealthRecord{}
	c.slots = map[string]slotTable{}
	c.plan, c.ix, c.specYAML = nil, nil, ""
	c.labels = nil
	c.mapRevs = newMapRevs()
	c.loadLocked(kvs)
	c.setRevLocked(rev)
	c.hub.resyncAll(rev)
	c.loadedMapRevsLocked(rev)
}

func (c *Controller) setRevLocked(rev int64) {
	if rev > c.rev {
		c.rev = rev
		close(c.revWait)
		c.revWait = make(chan struct{})
	}
}

// Revision returns the store revision the registry reflects.
func (c *Controller) Revision() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}

// WaitRevision blocks until the registry reflects rev.
func (c *Controller) WaitRevision(ctx context.Context, rev int64) error {
	for {
		c.mu.RLock()
		cur, ch := c.rev, c.revWait
		c.mu.RUnlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// rebuildIndexLocked builds the topology index from the records (at load).
func (c *Controller) rebuildIndexLocked() {
	nodes := make([]*NodeRecord, 0, len(c.nodes))
	for _, n := range c.nodes {
		nodes = append(nodes, n)
	}
	c.rebuildIndexFromLocked(nodes)
}

// rebuildIndexFromLocked builds the topology index from the node records
// nodes (every record of c.nodes) and the client records.
func (c *Controller) rebuildIndexFromLocked(nodes []*NodeRecord) {
	defer c.hub.refreshAll(c.lookupLocked)
	if c.plan == nil {
		return
	}
	c.ix = topology.New(c.plan, c.cfg.Topology)
	c.ix.SetPlan(c.plan, c.segPolicy)
	// Every planned cluster's (and region's gateways') labels cached first:
	// the entries are then built on every core, reading the registry only.
	for _, r := range c.plan.Regions {
		c.topoNode(&NodeRecord{Region: r.Name})
		for _, cl := range r.Clusters {
			c.topoNode(&NodeRecord{Region: r.Name, Cluster: cl.Name})
		}
	}
	// In chunks: the index keeps pointers into them, and a chunk is freed
	// once its nodes have all been replaced or removed.
	const chunk = 4096
	chunks := make([][]topology.Node, (len(nodes)+chunk-1)/chunk)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(chunks)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(chunks); i = int(next.Add(1) - 1) {
				part := nodes[i*chunk : min((i+1)*chunk, len(nodes))]
				out := make([]topology.Node, len(part))
				for j, n := range part {
					out[j] = c.topoNodeShared(n)
				}
				chunks[i] = out
			}
		})
	}
	wg.Wait()
	c.ix.Load(chunks, func(n *topology.Node, err error) { c.log.Warn("node outside the plan", "node", n.Name, "err", err) })
	for region, gw := range c.clientsGW {
		c.ix.PinClientsGateway(region, gw)
	}
	for _, r := range c.clients {
		if _, err := c.ix.UpsertClient(r.topo()); err != nil {
			c.log.Warn("client outside the plan", "client", r.Name, "err", err)
		}
	}
}

// applyLocked applies one store event to the registry and, when live
// (rev > 0), publishes the changes it causes.
func (c *Controller) applyLocked(key string, value []byte, deleted bool, rev int64) {
	var changes []topology.Change
	switch {
	case key == keySpec:
		if deleted {
			c.specYAML = ""
			return
		}
		if r, err := decode[SpecRecord](value); err == nil {
			if rev > 0 && c.specYAML != r.YAML {
				c.eventLocked("spec", "spec", "a new spec was applied")
			}
			c.specYAML = r.YAML
			if m, err := spec.Parse([]byte(r.YAML)); err == nil {
				c.mesh = m
				c.labels = nil
				if p, err := policy.Compile(m.Policy); err == nil {
					c.segPolicy = p
				} else {
					c.log.Error("policy in the spec does not compile", "err", err)
				}
				if p, d, err := policyFromSpec(m); err == nil {
					c.attestPolicy, c.reattest = p, d
				} else {
					c.log.Error("attestation policy in the spec does not load", "err", err)
				}
			}
		}
	case key == keyPlan:
		if deleted {
			return
		}
		p, err := plan.Decode(value)
		if err != nil {
			c.log.Error("undecodable plan in store", "err", err)
			return
		}
		c.plan = p
		if rev == 0 {
			return // the index is built once the load is complete
		}
		if c.ix == nil {
			c.rebuildIndexLocked()
			changes = []topology.Change{{Audience: topology.Audience{Scopes: []topology.Scope{{Kind: topology.ScopeAll}}}, Resync: true}}
		} else {
			changes = c.ix.SetPlan(p, c.segPolicy)
		}
	case strings.HasPrefix(key, prefixNodes):
		name := strings.TrimPrefix(key, prefixNodes)
		if deleted {
			if _, had := c.nodes[name]; had && rev > 0 {
				c.eventLocked("removed", name, "removed from the mesh")
				c.kickBackends()
			}
			delete(c.nodes, name)
			delete(c.status, name)
			if c.ix != nil && rev > 0 {
				changes = c.ix.Remove(name)
				c.hub.refresh(name, c.lookupLocked)
			}
			break
		}
		n, err := decodeNode(value)
		if err != nil {
			c.log.Error("undecodable node record", "key", key, "err", err)
			return
		}
		if n.Name == name {
			name = n.Name // one copy of the name, not two
		}
		if rev > 0 {
			switch old, had := c.nodes[name]; {
			case !had:
				c.eventLocked("enrolled", name, "%s in %s (%s)", n.Role, clusterOrRegion(&n), n.Class)
			case old.State != n.State:
				c.eventLocked("state", name, "%s → %s: %s", old.State, n.State, n.Reason)
				c.kickBackends()
			case old.Class != n.Class:
				c.eventLocked("state", name, "class %s → %s: %s", old.Class, n.Class, n.Reason)
			}
		}
		c.nodes[name] = &n
		if c.ix != nil && rev > 0 {
			ch, err := c.ix.Upsert(c.topoNode(&n))
			if err != nil {
				c.log.Warn("node outside the plan", "node", name, "err", err)
			}
			c.hub.refresh(n.Name, c.lookupLocked)
			changes = ch
		}
	case strings.HasPrefix(key, prefixClients):
		changes = c.applyClientLocked(key, value, deleted, rev)
	case strings.HasPrefix(key, prefixClientsGW):
		changes = c.applyClientsGatewayLocked(key, value, deleted, rev)
	case strings.HasPrefix(key, prefixHealth):
		name := strings.TrimPrefix(key, prefixHealth)
		if deleted {
			delete(c.health, name)
			if c.ix != nil && rev > 0 {
				before := c.designationsLocked()
				changes = c.ix.SetHealth(name, false)
				c.hub.refresh(name, c.lookupLocked)
				c.failoverEventsLocked(before)
			}
			break
		}
		h, err := decode[HealthRecord](value)
		if err != nil {
			return
		}
		old := c.health[name]
		c.health[name] = h
		if old.Healthy != h.Healthy {
			c.log.Info("gateway health", "gateway", name, "healthy", h.Healthy, "reason", h.Reason)
			if rev > 0 {
				c.eventLocked("gateway-health", name, "%s (%s)", map[bool]string{true: "healthy", false: "unhealthy"}[h.Healthy], h.Reason)
			}
		}
		if c.ix != nil && rev > 0 {
			before := c.designationsLocked()
			changes = c.ix.SetHealth(name, h.Healthy)
			c.hub.refresh(name, c.lookupLocked)
			c.failoverEventsLocked(before)
		}
	case strings.HasPrefix(key, prefixSlots):
		ck, n, ok := slotTableKey(key)
		if !ok {
			return
		}
		if deleted {
			c.slots[ck].set(n, slotAbsent)
			return
		}
		if slotHeldFast(value) {
			c.slots[ck] = c.slots[ck].set(n, slotHeld)
			return
		}
		s, err := decode[SlotRecord](value)
		if err != nil {
			return
		}
		c.slots[ck] = c.slots[ck].set(n, slotState(s))
	}
	if len(changes) > 0 && rev > 0 {
		c.checkMarkedLocked(rev, changes)
		c.hub.publish(rev, changes)
	}
}

func clusterOrRegion(n *NodeRecord) string {
	if n.Cluster == "" {
		return n.Region
	}
	return n.Region + "/" + n.Cluster
}

func (c *Controller) lookupLocked(name string) (*topology.Node, bool) {
	if c.ix == nil {
		return nil, false
	}
	return c.ix.Node(name)
}

// topoNode is a record as topology sees it: with its health and its labels
// over its cluster's and region's.
func (c *Controller) topoNode(n *NodeRecord) topology.Node {
	t := n.topo(c.health[n.Name].Healthy)
	if len(n.Labels) == 0 {
		ck := [2]string{n.Region, n.Cluster}
		labels, ok := c.labels[ck]
		if !ok {
			labels = c.placementLabels(n.Region, n.Cluster, nil)
			if c.labels == nil {
				c.labels = map[[2]string]map[string]string{}
			}
			c.labels[ck] = labels
		}
		t.Labels = labels
		return t
	}
	t.Labels = c.placementLabels(n.Region, n.Cluster, n.Labels)
	return t
}

// topoNodeShared is topoNode without writing the labels cache (safe on
// several goroutines while the registry is not written).
func (c *Controller) topoNodeShared(n *NodeRecord) topology.Node {
	if len(n.Labels) == 0 {
		if _, ok := c.labels[[2]string{n.Region, n.Cluster}]; !ok {
			t := n.topo(c.health[n.Name].Healthy)
			t.Labels = c.placementLabels(n.Region, n.Cluster, nil)
			return t
		}
	}
	return c.topoNode(n)
}

// placementLabels are a region's labels, its cluster's over them, and own
// over both.
func (c *Controller) placementLabels(region, cluster string, own map[string]string) map[string]string {
	labels := map[string]string{}
	if c.mesh != nil {
		for _, r := range c.mesh.Regions {
			if r.Name != region {
				continue
			}
			maps.Copy(labels, r.Labels)
			for _, cl := range r.Clusters {
				if cl.Name == cluster {
					maps.Copy(labels, cl.Labels)
				}
			}
		}
	}
	maps.Copy(labels, own)
	return labels
}

// storeMonitor probes the store with a read that needs its quorum. While
// the store has not answered for StoreFenceAfter, the replica is fenced:
// it ends every watch stream and Watch refuses new ones, so nodes resume
// on a replica that knows the mesh instead of following a frozen map.
func (c *Controller) storeMonitor(ctx context.Context) {
	t := time.NewTicker(c.cfg.StoreProbeEvery)
	defer t.Stop()
	var failingSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, c.cfg.StoreProbeEvery)
		_, err := c.st.Get(pctx, keyCA)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failingSince = time.Time{}
			if c.fenced.Swap(false) {
				c.log.Warn("store answers again; serving watch streams")
			}
			continue
		}
		if failingSince.IsZero() {
			failingSince = time.Now()
		}
		if time.Since(failingSince) >= c.cfg.StoreFenceAfter && !c.fenced.Swap(true) {
			c.log.Error("store unreachable: ending watch streams so nodes resume on a replica that can reach it", "err", err, "since", failingSince)
			c.mu.Lock()
			for _, s := range c.hub.subs {
				c.hub.unsubscribe(s)
			}
			c.mu.Unlock()
		}
	}
}
