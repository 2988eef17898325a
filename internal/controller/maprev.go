package controller

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/topology"
)

// Map revisions: the store revision of the last change that could alter
// some node's map, kept per scope so that a replica that has just started
// (no history) can tell an agent resuming from revision r that its map is
// current when no scope its map depends on changed after r.
//
// Every transaction that writes a key the registry turns into map changes
// (spec, plan, nodes/, clients/, health/) also writes the marker keys of the
// scopes that write concerns, in the same transaction (markingStore), so a
// marker's ModRev is the revision of the last map-relevant change of its
// scope. Writes that change no map (renewals, re-attestations that keep the
// state, heartbeats that keep the health) write no marker.
//
//	meta/maprev/all                every map (spec, plan, clients, anything unsure)
//	meta/maprev/gateways           every gateway's map (a gateway's record or health)
//	meta/maprev/region/<r>         the maps of region r's nodes (its gateways' record or health)
//	meta/maprev/cluster/<r>/<c>    the maps of r/c's nodes and of r's gateways (a node of r/c)
//	meta/maprev/sets               the maps of nodes whose firewall uses sets (any node's prefixes or labels)
//
// A node's floor (mapRevs.floor) is the highest marker of the scopes its
// map depends on: a non-gateway node of r/c depends on all, region/r,
// cluster/r/c, and sets when its firewall uses sets; a gateway of r on
// all, gateways, every cluster of r, and sets. The markers are a superset
// of the audiences topology computes for the same writes (topology's
// Upsert, Remove, SetHealth, UpsertClient); when a revision publishes
// changes without a marker (a writer that bypassed markingStore) the
// replica writes meta/maprev/all itself (checkMarked).
const (
	prefixMapRev     = "meta/maprev/"
	keyMapRevAll     = prefixMapRev + "all"
	keyMapRevGWs     = prefixMapRev + "gateways"
	keyMapRevSets    = prefixMapRev + "sets"
	prefixMapRevReg  = prefixMapRev + "region/"
	prefixMapRevClus = prefixMapRev + "cluster/"
)

// mapRevs are the marker revisions a replica knows (loaded, then followed).
type mapRevs struct {
	all, gateways, sets int64
	region              map[string]int64 // region → rev
	cluster             map[string]int64 // region/cluster → rev
	regionClusters      map[string]int64 // region → highest of its clusters
}

func newMapRevs() *mapRevs {
	return &mapRevs{region: map[string]int64{}, cluster: map[string]int64{}, regionClusters: map[string]int64{}}
}

// set records marker key's revision; it reports whether key is a marker.
func (m *mapRevs) set(key string, rev int64) bool {
	up := func(v *int64) {
		*v = max(*v, rev)
	}
	switch {
	case key == keyMapRevAll:
		up(&m.all)
	case key == keyMapRevGWs:
		up(&m.gateways)
	case key == keyMapRevSets:
		up(&m.sets)
	case strings.HasPrefix(key, prefixMapRevReg):
		r := strings.TrimPrefix(key, prefixMapRevReg)
		m.region[r] = max(m.region[r], rev)
	case strings.HasPrefix(key, prefixMapRevClus):
		rc := strings.TrimPrefix(key, prefixMapRevClus)
		m.cluster[rc] = max(m.cluster[rc], rev)
		r, _, _ := strings.Cut(rc, "/")
		m.regionClusters[r] = max(m.regionClusters[r], rev)
	default:
		return false
	}
	return true
}

// raise lifts every scope to at least rev (a reload, or a change whose
// scopes are unknown).
func (m *mapRevs) raise(rev int64) { m.all = max(m.all, rev) }

// floor is the revision of the last change that may have altered node n's
// map: a node whose map has revision ≥ floor has a current map.
func (m *mapRevs) floor(n *topology.Node) int64 {
	f := m.all
	if len(n.RefSets()) > 0 {
		f = max(f, m.sets)
	}
	if n.IsGateway() {
		return max(f, m.gateways, m.regionClusters[n.Region])
	}
	return max(f, m.region[n.Region], m.cluster[n.Region+"/"+n.Cluster])
}

// markingStore writes, with every transaction that changes a
// map-relevant key, the markers of the scopes it concerns.
type markingStore struct{ Store }

func (s markingStore) Update(ctx context.Context, fn func(tx store.Tx) error) (int64, error) {
	return s.Store.Update(ctx, func(tx store.Tx) error {
		mt := &markingTx{Tx: tx}
		if err := fn(mt); err != nil {
			return err
		}
		return mt.mark()
	})
}

// markingTx records the value each map-relevant key had before the
// transaction first wrote it.
type markingTx struct {
	store.Tx
	before map[string]*[]byte // nil: absent
	order  []string
}

func mapRelevant(key string) bool {
	return key == keySpec || key == keyPlan || strings.HasPrefix(key, prefixNodes) ||
		strings.HasPrefix(key, prefixClients) || strings.HasPrefix(key, prefixHealth) ||
		strings.HasPrefix(key, prefixClientsGW)
}

func (t *markingTx) remember(key string) error {
	if !mapRelevant(key) {
		return nil
	}
	if _, ok := t.before[key]; ok {
		return nil
	}
	var v *[]byte
	switch kv, err := t.Tx.Get(key); {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return err
	default:
		v = &kv.Value
	}
	if t.before == nil {
		t.before = map[string]*[]byte{}
	}
	t.before[key] = v
	t.order = append(t.order, key)
	return nil
}

func (t *markingTx) Put(key string, value []byte) error {
	if err := t.remember(key); err != nil {
		return err
	}
	return t.Tx.Put(key, value)
}

func (t *markingTx) Delete(key string) error {
	if err := t.remember(key); err != nil {
		return err
	}
	return t.Tx.Delete(key)
}

// after returns key's value as this transaction leaves it (nil: absent).
func (t *markingTx) after(key string) (*[]byte, error) {
	kv, err := t.Tx.Get(key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &kv.Value, nil
}

// mark writes the markers of every map-relevant key the transaction
// changed.
func (t *markingTx) mark() error {
	markers := map[string]bool{}
	for _, key := range t.order {
		after, err := t.after(key)
		if err != nil {
			return err
		}
		if err := t.markersOf(key, t.before[key], after, markers); err != nil {
			return err
		}
	}
	if markers[keyMapRevAll] {
		markers = map[string]bool{keyMapRevAll: true}
	}
	for _, k := range slices.Sorted(maps.Keys(markers)) {
		if err := t.Tx.Put(k, []byte("1")); err != nil {
			return err
		}
	}
	return nil
}

// markersOf adds to markers the scopes whose maps a change of key from
// before to after may alter.
func (t *markingTx) markersOf(key string, before, after *[]byte, markers map[string]bool) error {
	switch {
	case strings.HasPrefix(key, prefixNodes):
		var old, cur *NodeRecord
		for _, v := range []struct {
			b   *[]byte
			rec **NodeRecord
		}{{before, &old}, {after, &cur}} {
			if v.b == nil {
				continue
			}
			n, err := decodeNode(*v.b)
			if err != nil {
				markers[keyMapRevAll] = true // unsure: every map
				return nil
			}
			*v.rec = &n
		}
		if old != nil && cur != nil && sameMapFields(old, cur) {
			return nil // a renewal, a re-attestation, a status
		}
		for _, n := range []*NodeRecord{old, cur} {
			if n != nil {
				nodeMarkers(n, markers)
			}
		}
	case strings.HasPrefix(key, prefixHealth):
		if healthyIn(before) == healthyIn(after) {
			return nil // a heartbeat
		}
		name := strings.TrimPrefix(key, prefixHealth)
		v, err := t.after(nodeKey(name))
		if err != nil {
			return err
		}
		if v == nil {
			v = t.before[nodeKey(name)]
		}
		if v == nil {
			markers[keyMapRevAll] = true
			return nil
		}
		n, err := decodeNode(*v)
		if err != nil {
			markers[keyMapRevAll] = true
			return nil
		}
		nodeMarkers(&n, markers)
	default:
		// spec, plan, clients/, clientsgw/: rare, and they reach across
		// clusters.
		if !bytesPtrEqual(before, after) {
			markers[keyMapRevAll] = true
		}
	}
	return nil
}

// nodeMarkers adds the scopes whose maps node n's entry is in.
func nodeMarkers(n *NodeRecord, markers map[string]bool) {
	markers[keyMapRevSets] = true
	if n.Cluster == "" || n.Role == netmap.RoleGateway {
		markers[keyMapRevGWs] = true
		markers[prefixMapRevReg+n.Region] = true
		return
	}
	markers[prefixMapRevClus+n.Region+"/"+n.Cluster] = true
}

func healthyIn(v *[]byte) bool {
	if v == nil {
		return false
	}
	h, err := decode[HealthRecord](*v)
	return err == nil && h.Healthy
}

func bytesPtrEqual(a, b *[]byte) bool {
	if a == nil || b == nil {
		return a == b
	}
	return string(*a) == string(*b)
}

// sameMapFields reports whether two records of a node give it the same
// entry in every map, the same map of its own and the same set
// memberships: every field NodeRecord.topo reads, and the labels.
// (TestMapFieldsClassified fails when NodeRecord gains a field that is not
// classified here or in its list of fields no map depends on.)
func sameMapFields(a, b *NodeRecord) bool {
	return a.Name == b.Name && a.Region == b.Region && a.Cluster == b.Cluster && a.Role == b.Role &&
		a.Class == b.Class && a.State == b.State && a.PublicKey == b.PublicKey &&
		a.Slot == b.Slot && a.OverlayIPv4 == b.OverlayIPv4 && a.OverlayIPv6 == b.OverlayIPv6 &&
		a.PodIPv4 == b.PodIPv4 && a.PodIPv6 == b.PodIPv6 &&
		a.Endpoint == b.Endpoint && a.PublicEndpoint == b.PublicEndpoint &&
		maps.Equal(a.Labels, b.Labels)
}

func (m *mapRevs) clone() *mapRevs {
	return &mapRevs{all: m.all, gateways: m.gateways, sets: m.sets,
		region: maps.Clone(m.region), cluster: maps.Clone(m.cluster), regionClusters: maps.Clone(m.regionClusters)}
}

// loadedMapRevsLocked records the markers loaded with the registry at
// revision rev. A store without the marker of every map (older than
// markers, and not bootstrapped since) gives nothing before rev.
func (c *Controller) loadedMapRevsLocked(rev int64) {
	if c.mapRevs.all == 0 {
		c.mapRevs.raise(rev)
	}
	c.loadRev = rev
	c.loadedRevs = c.mapRevs.clone()
}

// covers reports whether every node scope selects has a floor of at least
// rev.
func (m *mapRevs) covers(sc topology.Scope, rev int64, lookup func(string) (*topology.Node, bool)) bool {
	if m.all >= rev {
		return true
	}
	switch sc.Kind {
	case topology.ScopeCluster:
		return m.region[sc.Region] >= rev || m.cluster[sc.Region+"/"+sc.Cluster] >= rev
	case topology.ScopeRegionGateways:
		return m.gateways >= rev || m.regionClusters[sc.Region] >= rev
	case topology.ScopeOtherGateways:
		return m.gateways >= rev
	case topology.ScopeNode:
		n, ok := lookup(sc.Node)
		return !ok || m.floor(n) >= rev
	case topology.ScopeSetUsers:
		return m.sets >= rev
	}
	return false // ScopeAll, or a kind this check does not know
}

// checkMarkedLocked checks that the markers written at rev cover the
// audiences of the changes rev publishes. When they do not (a writer that
// bypassed markingStore, or a marker this file misses), the replica stops
// trusting every earlier revision and persists that (the marker of every
// map), so that a resume is answered with history or a snapshot.
func (c *Controller) checkMarkedLocked(rev int64, changes []topology.Change) {
	if c.mapRevs.all >= rev {
		return
	}
	for _, ch := range changes {
		for _, sc := range ch.Audience.Scopes {
			if c.mapRevs.covers(sc, rev, c.lookupLocked) {
				continue
			}
			c.unmarked.Add(1)
			c.log.Error("a map change without its map-revision marker; marking every map", "revision", rev, "scope", sc)
			c.mapRevs.raise(rev)
			go c.markAll()
			return
		}
	}
}

// markAll writes the marker of every map.
func (c *Controller) markAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.st.Update(ctx, func(tx store.Tx) error { return tx.Put(keyMapRevAll, []byte("1")) }); err != nil {
		c.log.Error("writing the marker of every map (the next start may answer a resume from an older revision as current)", "err", err)
	}
}

// resumeLocked returns the frames node n missed after revision from, or
// ok=false when it needs a snapshot. A map at or above n's floor (the live
// markers) is current: nothing it depends on changed since, whatever
// history holds. Otherwise history answers when it reaches back to from,
// or, while it still reaches back to the load (nothing dropped yet), when
// from is at or above n's floor as loaded: n missed nothing up to the load
// and history has everything after it.
func (c *Controller) resumeLocked(n *topology.Node, from int64) (frames []frame, result string, ok bool) {
	if !c.cfg.ResumeFromHistoryOnly && from >= c.mapRevs.floor(n) {
		return nil, resumeCurrent, true
	}
	floor := c.hub.floor
	if !c.cfg.ResumeFromHistoryOnly && c.loadedRevs != nil && c.hub.floor == c.loadRev && from >= c.loadedRevs.floor(n) {
		floor = min(floor, from)
	}
	frames, ok = c.hub.since(from, floor, n)
	switch {
	case !ok:
		return nil, resumeSnapshot, false
	case len(frames) == 0:
		return nil, resumeCurrent, true
	}
	return frames, resumeDeltas, true
}

// Results of a resume (statemesh_watch_resumes_total).
const (
	resumeCurrent  = "current"
	resumeDeltas   = "deltas"
	resumeSnapshot = "snapshot"
)
