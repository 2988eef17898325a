// Package netmakersync keeps a Netmaker server in line with StateMesh's
// registry (docs/netmaker.md): attested nodes' hosts admitted, the hosts of
// nodes StateMesh dropped removed (decisions kept in the store, so a
// restart does not forget them, until they can no longer matter: the node
// has left the registry and Netmaker lists no host or pending host with
// its key), networks, enrollment keys, tags, ACL policies and gateways as
// the mesh says. It runs beside the controller,
// wired by the controller command: it reads the registry through the
// small Registry interface the controller offers, and the controller knows
// nothing of Netmaker.
package netmakersync

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/topology"
)

// Registry is what the sync needs of the controller (*controller.Controller
// implements it).
type Registry interface {
	ReadRegistry(fn func(controller.RegistryView))
	BackendChanges() <-chan struct{}
	SetBackends([]api.BackendStatus)
}

// Store is where the removal decisions are kept (the controller's store).
type Store interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Update(ctx context.Context, fn func(tx store.Tx) error) (int64, error)
}

// Config connects the sync to a Netmaker server.
type Config struct {
	Client *netmaker.Client
	// Networks maps a region to its Netmaker network and address range.
	Networks map[string]netmaker.NetworkSpec
	// Every is the reconcile interval (default 10 s); Grace how long an
	// unattested pending host waits before it is rejected (default 5 min).
	Every time.Duration
	Grace time.Duration
	// KeyTTL, when set, makes the clusters' enrollment keys expire after
	// it; each is replaced by a new one once less than a fifth is left.
	KeyTTL time.Duration
	Store  Store
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Sync is one Netmaker server kept in line with the registry.
type Sync struct {
	cfg Config
	reg Registry
	log *slog.Logger
	// unattested counts unattested Netmaker hosts by outcome.
	unattested *prometheus.CounterVec
}

// New returns a sync; Run runs it. Its metrics are Collector's.
func New(reg Registry, cfg Config) *Sync {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Sync{cfg: cfg, reg: reg, log: cfg.Logger.With("backend", "netmaker"),
		unattested: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "statemesh_netmaker_unattested_hosts_total",
			Help: "Netmaker hosts that no attested node owns, by outcome (removed: they joined without approval and were taken out).",
		}, []string{"outcome"})}
}

// Collector is the sync's metrics, for the controller's endpoint.
func (s *Sync) Collector() prometheus.Collector { return s.unattested }

// GatewayLabel marks a host (role host, netclient) as a candidate
// Netmaker gateway of its region's network: the first attested candidate
// present in the network (by name) is the gateway, and the next takes
// over when it is quarantined or removed.
const GatewayLabel = "netmaker-gateway"

// netmakerState is what the loop remembers and reports. seen and gone
// are kept in the store (prefixNetmaker) so that a restarted controller
// still removes the hosts of nodes dropped before it restarted. A
// decision is forgotten (memory and store) once it can no longer matter:
// its node has left the registry and the last pass found no host and no
// pending host with its key in Netmaker (absent).
type netmakerState struct {
	seen   map[string]string    // public key → node, of attested nodes seen
	gone   map[string]time.Time // public key → when StateMesh dropped it
	status api.BackendStatus
	// absent: keys of gone the last pass found nowhere in Netmaker
	// (netmaker.Report.Absent); memory only.
	absent []string

	// saved is what the store holds (key → record), to write changes only.
	saved map[string]netmakerDecision
}

// netmakerDecision is one host's record in the store: the node that owns
// the key and, once StateMesh dropped it, when.
type netmakerDecision struct {
	Node string    `json:"node"`
	Gone time.Time `json:"gone,omitzero"`
}

// prefixNetmaker holds netmakerDecisions by public key (base64url, so the
// key has no slash).
const prefixNetmaker = "netmaker/hosts/"

func netmakerStoreKey(pub string) string {
	b, err := base64.StdEncoding.DecodeString(pub)
	if err != nil {
		return prefixNetmaker + base64.RawURLEncoding.EncodeToString([]byte(pub))
	}
	return prefixNetmaker + base64.RawURLEncoding.EncodeToString(b)
}

// loadNetmakerState reads the decisions a previous controller kept.
func (s *Sync) loadState(ctx context.Context) (*netmakerState, error) {
	st := &netmakerState{seen: map[string]string{}, gone: map[string]time.Time{}, saved: map[string]netmakerDecision{}}
	kvs, _, err := s.cfg.Store.List(ctx, prefixNetmaker)
	if err != nil {
		return st, err
	}
	for _, kv := range kvs {
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(kv.Key, prefixNetmaker))
		if err != nil {
			continue
		}
		d, err := decode[netmakerDecision](kv.Value)
		if err != nil || d.Node == "" {
			continue
		}
		pub := base64.StdEncoding.EncodeToString(raw)
		st.seen[pub] = d.Node
		if !d.Gone.IsZero() {
			st.gone[pub] = d.Gone
		}
		st.saved[pub] = d
	}
	return st, nil
}

// saveNetmakerState writes the decisions that changed since the last save.
func (s *Sync) saveState(ctx context.Context, st *netmakerState) error {
	want := map[string]netmakerDecision{}
	for k, node := range st.seen {
		want[k] = netmakerDecision{Node: node, Gone: st.gone[k]}
	}
	var put, del []string
	for k, d := range want {
		if old, ok := st.saved[k]; !ok || old.Node != d.Node || !old.Gone.Equal(d.Gone) {
			put = append(put, k)
		}
	}
	for k := range st.saved {
		if _, ok := want[k]; !ok {
			del = append(del, k)
		}
	}
	if len(put)+len(del) == 0 {
		return nil
	}
	_, err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		for _, k := range put {
			if err := tx.Put(netmakerStoreKey(k), encode(want[k])); err != nil {
				return err
			}
		}
		for _, k := range del {
			if err := tx.Delete(netmakerStoreKey(k)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("keeping the Netmaker removal decisions in the store: %w", err)
	}
	st.saved = want
	return nil
}

// Run reconciles the Netmaker server every interval and right after the
// registry changes a node's state, until ctx ends.
func (s *Sync) Run(ctx context.Context) {
	every := s.cfg.Every
	if every == 0 {
		every = 10 * time.Second
	}
	r := &netmaker.Reconciler{C: s.cfg.Client, Now: s.cfg.Now, Log: s.log}
	st, err := s.loadState(ctx)
	for err != nil {
		// Without the decisions kept, hosts dropped before a restart
		// would stay: no pass runs until they are read.
		s.log.Warn("netmaker: reading the removal decisions from the store", "err", err)
		s.record(st, netmaker.Report{}, fmt.Errorf("reading the removal decisions from the store: %w", err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		st, err = s.loadState(ctx)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.pass(ctx, r, st, every)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.reg.BackendChanges():
		}
	}
}

// pass is one round of Run: the desired state from the registry, the
// decisions saved, one reconcile, its report recorded.
func (s *Sync) pass(ctx context.Context, r *netmaker.Reconciler, st *netmakerState, every time.Duration) {
	d, policyErr, err := s.desired(st)
	var saveErr error
	if err == nil {
		// Kept before Netmaker is touched, so a restart does not
		// forget a decision; a store that fails is reported, and
		// the removal goes on from memory.
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		saveErr = s.saveState(sctx, st)
		cancel()
	}
	var rep netmaker.Report
	if err == nil {
		pctx, cancel := context.WithTimeout(ctx, every+30*time.Second)
		rep, err = r.Reconcile(pctx, d)
		cancel()
	}
	st.absent = rep.Absent
	s.record(st, rep, errors.Join(policyErr, saveErr, err))
}

// desired builds the state Netmaker should have from the registry. A
// policy Netmaker cannot express is reported (policyErr) and its tags and
// ACLs are left as they are, while admission and removal go on.
func (s *Sync) desired(st *netmakerState) (d netmaker.Desired, policyErr, err error) {
	s.reg.ReadRegistry(func(v controller.RegistryView) {
		d, policyErr, err = s.desiredFrom(v, st)
	})
	return d, policyErr, err
}

func (s *Sync) desiredFrom(v controller.RegistryView, st *netmakerState) (d netmaker.Desired, policyErr, err error) {
	cfg := s.cfg
	if v.Plan == nil || v.Mesh == nil {
		return d, nil, fmt.Errorf("no spec applied")
	}
	now := s.cfg.Now()
	d = netmaker.Desired{Hosts: map[string]netmaker.Attested{}, Removed: map[string]time.Time{}, Grace: cfg.Grace}
	var clusters []netmaker.Cluster
	network := map[string]string{} // region → network
	for _, r := range v.Plan.Regions {
		ns, ok := cfg.Networks[r.Name]
		if !ok {
			continue
		}
		if ns.MTU == 0 {
			if l, ok := r.Role(netmap.RoleNode); ok {
				ns.MTU = l.WireGuardMTU
			}
		}
		d.Networks = append(d.Networks, ns)
		network[r.Name] = ns.Name
		for _, cl := range r.Clusters {
			clusters = append(clusters, netmaker.Cluster{Region: r.Name, Name: cl.Name, Network: ns.Name})
		}
	}
	acls, tags, err := netmaker.MapPolicy(v.Mesh.Policy, clusters)
	if err != nil {
		d.SkipPolicy = true
		policyErr = fmt.Errorf("the policy cannot be written in Netmaker; its tags and ACL policies there are left as they are: %w", err)
	}
	d.ACLs = acls
	for _, cl := range clusters {
		d.Keys = append(d.Keys, netmaker.KeySpec{Region: cl.Region, Cluster: cl.Name, Network: cl.Network,
			Tags: tags[cl.Region+"/"+cl.Name], TTL: cfg.KeyTTL})
	}
	current := map[string]bool{}
	candidates := map[string][]controller.BackendNode{} // network → gateway candidates
	for n := range v.Nodes {
		k := n.PublicKey.String()
		current[k] = true
		if n.State == topology.StateActive {
			// Weak ones are known too: their pending requests are
			// rejected at once instead of after the grace period.
			d.Hosts[k] = netmaker.Attested{Node: n.Name, Region: n.Region, Cluster: n.Cluster, Class: n.Class}
		}
		switch {
		case n.State == topology.StateActive && n.Class == netmap.ClassStrong:
			st.seen[k] = n.Name
			delete(st.gone, k)
			if net, ok := network[n.Region]; ok && n.Role == netmap.RoleHost && n.Labels[GatewayLabel] == "true" {
				candidates[net] = append(candidates[net], n)
			}
		case st.seen[k] != "":
			// Admitted once, no longer qualifies: quarantined, or
			// downgraded to weak by a failed re-attestation.
			if _, ok := st.gone[k]; !ok {
				st.gone[k] = v.LastChange(n.Name, now)
			}
		}
	}
	// A decision is forgotten once it can no longer matter: the node
	// has left the registry (a node that comes back with the key is
	// attested anew) and the last pass found no host and no pending
	// host with its key in Netmaker (nothing left to remove or reject).
	// saveState then deletes it from the store.
	for _, k := range st.absent {
		if _, dropped := st.gone[k]; dropped && !current[k] {
			s.log.Info("netmaker: removal decision forgotten: the node left the registry and Netmaker lists no host with its key",
				"node", st.seen[k], "dropped", st.gone[k])
			delete(st.seen, k)
			delete(st.gone, k)
		}
	}
	st.absent = nil
	for k, name := range st.seen {
		if !current[k] {
			if _, ok := st.gone[k]; !ok {
				st.gone[k] = v.LastChange(name, now)
			}
		}
	}
	for k, at := range st.gone {
		d.Removed[k] = at
	}
	for _, ns := range d.Networks {
		cs := candidates[ns.Name]
		if len(cs) == 0 {
			continue
		}
		slices.SortFunc(cs, func(a, b controller.BackendNode) int { return strings.Compare(a.Name, b.Name) })
		g := netmaker.GatewaySpec{Network: ns.Name}
		for _, n := range cs {
			g.Candidates = append(g.Candidates, n.PublicKey.String())
		}
		d.Gateways = append(d.Gateways, g)
	}
	return d, policyErr, nil
}

// record logs a pass and publishes the backend's status.
func (s *Sync) record(st *netmakerState, rep netmaker.Report, err error) {
	now := s.cfg.Now()
	bs := &st.status
	bs.Name, bs.LastSync = "netmaker", now
	bs.Healthy, bs.Error = err == nil, ""
	if err != nil {
		bs.Error = err.Error()
		s.log.Warn("netmaker reconcile", "err", err)
	}
	bs.Approved += len(rep.Approved)
	bs.Rejected += len(rep.Rejected)
	bs.Removed += len(rep.Removed)
	for host, took := range rep.Removed {
		s.log.Info("netmaker host removed", "host", host, "after", took.Round(time.Millisecond))
	}
	for _, rm := range rep.Removals {
		if rm.Unattested {
			bs.RemovedUnattested++
			s.unattested.WithLabelValues("removed").Inc()
			s.log.Warn("netmaker host removed: no attested node owns it and it joined without approval", "host", rm.Host, "network", rm.Network)
		}
	}
	for _, u := range rep.Unattested {
		if !slices.Contains(bs.Unattested, u) { // once, not every pass
			s.log.Warn("netmaker host left in place though no attested node owns it (admitted in Netmaker by someone else)", "host", u)
		}
	}
	if err == nil || rep.Calls > 0 {
		bs.Unattested, bs.Ungated = slices.Clone(rep.Unattested), rep.Ungated
	}
	s.reg.SetBackends([]api.BackendStatus{*bs})
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("netmakersync: encoding %T: %v", v, err))
	}
	return b
}

func decode[T any](b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	return v, err
}
