package controller

import (
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/topology"
)

// hub fans deltas out to watch streams. Each change is encoded once and the
// same bytes are queued to every subscriber in its audience; subscribers
// are indexed by cluster and by region so a change visits only the streams
// it concerns. Each subscriber has a bounded queue: one that falls behind
// is flagged and resynchronized with a snapshot instead of growing memory
// or slowing the others.
//
// All methods are called with Controller.mu held (write for publish and
// subscribe, so a new subscriber's snapshot and its queue are consistent).
type hub struct {
	queueLen  int
	subs      map[string]*subscriber
	byCluster map[string]map[*subscriber]struct{}
	byRegion  map[string]map[*subscriber]struct{} // gateways by region
	gateways  map[*subscriber]struct{}
	bySet     map[string]map[*subscriber]struct{} // users of firewall sets
	history   []histEntry                         // ring, oldest first
	histLen   int
	// floor is the highest revision not covered by history: a resume from
	// a revision ≥ floor is complete.
	floor int64

	published atomic.Int64 // frames queued, for tests and metrics
	dropped   atomic.Int64 // subscribers flagged for overflow
}

type histEntry struct {
	rev    int64
	change topology.Change
}

// subscriber is one node's watch stream.
type subscriber struct {
	name     string
	cluster  string // region/cluster, "" for gateways
	region   string
	gateway  bool
	sets     []string
	frames   *frameQueue
	overflow atomic.Bool
	lastRev  atomic.Int64 // revision of the last frame queued
	// node is the node's current topology entry, nil once it is removed.
	// The controller keeps it current (refresh) whenever the index
	// replaces the node's entry, so that publishing reads it instead of
	// looking each stream's node up by name in an index of the whole
	// fleet: what a join costs then does not grow with the fleet.
	node *topology.Node
}

// frame is a pre-encoded watch frame; resync asks the stream for a fresh
// snapshot.
type frame struct {
	rev    int64
	data   []byte
	resync bool
	at     time.Time // when the change was published (fan-out latency)
}

func newHub(histLen, queueLen int) *hub {
	return &hub{
		queueLen:  queueLen,
		subs:      map[string]*subscriber{},
		byCluster: map[string]map[*subscriber]struct{}{},
		byRegion:  map[string]map[*subscriber]struct{}{},
		gateways:  map[*subscriber]struct{}{},
		bySet:     map[string]map[*subscriber]struct{}{},
		histLen:   histLen,
	}
}

func addTo(m map[string]map[*subscriber]struct{}, k string, s *subscriber) {
	if m[k] == nil {
		m[k] = map[*subscriber]struct{}{}
	}
	m[k][s] = struct{}{}
}

// subscribe registers a stream for node n, replacing an older stream of
// the same node (which is told to stop by closing its queue).
func (h *hub) subscribe(n *topology.Node) *subscriber {
	if old, ok := h.subs[n.Name]; ok {
		h.unsubscribe(old)
	}
	s := &subscriber{name: n.Name, region: n.Region, gateway: n.IsGateway(), frames: newFrameQueue(h.queueLen), node: n}
	h.subs[n.Name] = s
	if s.gateway {
		addTo(h.byRegion, n.Region, s)
		h.gateways[s] = struct{}{}
	} else {
		s.cluster = n.Region + "/" + n.Cluster
		addTo(h.byCluster, s.cluster, s)
	}
	h.reindex(s, n.RefSets())
	return s
}

// refresh re-reads the topology entry of node name's stream, if it has
// one, after the index replaced or removed it.
func (h *hub) refresh(name string, lookup func(string) (*topology.Node, bool)) {
	if s, ok := h.subs[name]; ok {
		s.node, _ = lookup(name)
	}
}

// refreshAll re-reads every stream's topology entry (a new index).
func (h *hub) refreshAll(lookup func(string) (*topology.Node, bool)) {
	for name, s := range h.subs {
		s.node, _ = lookup(name)
	}
}

// reindex records which firewall sets a stream's node uses.
func (h *hub) reindex(s *subscriber, sets []string) {
	for _, old := range s.sets {
		delete(h.bySet[old], s)
	}
	s.sets = append([]string(nil), sets...)
	for _, set := range s.sets {
		addTo(h.bySet, set, s)
	}
}

// unsubscribe removes a stream; it is a no-op for a replaced stream.
func (h *hub) unsubscribe(s *subscriber) {
	if h.subs[s.name] != s {
		return
	}
	delete(h.subs, s.name)
	delete(h.byCluster[s.cluster], s)
	delete(h.byRegion[s.region], s)
	delete(h.gateways, s)
	for _, set := range s.sets {
		delete(h.bySet[set], s)
	}
	s.frames.close()
}

// Len returns the number of open streams.
func (h *hub) len() int { return len(h.subs) }

func (h *hub) enqueue(s *subscriber, f frame) {
	s.lastRev.Store(f.rev)
	if s.frames.push(f) {
		h.published.Add(1)
	} else if !s.overflow.Swap(true) {
		h.dropped.Add(1)
	}
}

// publish queues the changes of one revision to every stream in their
// audiences and records them for resumption. Each stream's node (its
// state decides whether it is included) is its current topology entry
// (subscriber.node).
func (h *hub) publish(rev int64, changes []topology.Change) {
	now := time.Now()
	for _, ch := range changes {
		h.record(rev, ch)
		var shared []byte
		deliver := func(s *subscriber) {
			n := s.node
			if n == nil {
				// Removed: a resync makes the stream notice and end.
				h.enqueue(s, frame{rev: rev, resync: true})
				return
			}
			if !ch.Audience.Includes(n) {
				return
			}
			if ch.Resync {
				h.reindex(s, n.RefSets())
				h.enqueue(s, frame{rev: rev, resync: true})
				return
			}
			if ch.Names(s.name) {
				d := ch.For(s.name)
				if d.Empty() {
					return
				}
				h.enqueue(s, frame{rev: rev, data: encodeDelta(rev, d), at: now})
				return
			}
			if shared == nil {
				shared = encodeDelta(rev, ch.Delta)
			}
			h.enqueue(s, frame{rev: rev, data: shared, at: now})
		}
		for _, sc := range ch.Audience.Scopes {
			switch sc.Kind {
			case topology.ScopeCluster:
				for s := range h.byCluster[sc.Region+"/"+sc.Cluster] {
					deliver(s)
				}
			case topology.ScopeRegionGateways:
				for s := range h.byRegion[sc.Region] {
					deliver(s)
				}
			case topology.ScopeOtherGateways:
				for s := range h.gateways {
					if s.region != sc.Region {
						deliver(s)
					}
				}
			case topology.ScopeNode:
				if s, ok := h.subs[sc.Node]; ok {
					deliver(s)
				}
			case topology.ScopeAll:
				for _, s := range h.subs {
					deliver(s)
				}
			case topology.ScopeSetUsers:
				for s := range h.bySet[sc.Set] {
					deliver(s)
				}
			}
		}
	}
}

func (h *hub) record(rev int64, ch topology.Change) {
	if len(h.history) >= h.histLen {
		// Drop the oldest quarter at once to keep appends amortized.
		n := max(1, h.histLen/4)
		h.floor = h.history[n-1].rev
		h.history = append(h.history[:0], h.history[n:]...)
	}
	h.history = append(h.history, histEntry{rev: rev, change: ch})
}

// since returns the frames node n missed after revision from, or ok=false
// when history does not cover it (from < floor: the caller passes h.floor,
// or lower when it knows n missed nothing below it) or a resync is among
// them (then the stream starts with a snapshot).
func (h *hub) since(from, floor int64, n *topology.Node) ([]frame, bool) {
	if from < floor {
		return nil, false
	}
	var out []frame
	for _, e := range h.history {
		if e.rev <= from || !e.change.Audience.Includes(n) {
			continue
		}
		if e.change.Resync {
			return nil, false
		}
		d := e.change.For(n.Name)
		if d.Empty() {
			continue
		}
		out = append(out, frame{rev: e.rev, data: encodeDelta(e.rev, d)})
	}
	return out, true
}

// resyncAll asks every stream for a fresh snapshot (after a reload) and
// forgets history.
func (h *hub) resyncAll(rev int64) {
	h.history = nil
	h.floor = rev
	for _, s := range h.subs {
		h.enqueue(s, frame{rev: rev, resync: true})
	}
}

func encodeDelta(rev int64, d netmap.Delta) []byte {
	d.Revision = rev
	b, err := json.Marshal(api.Frame{Type: api.FrameDelta, Revision: rev, Delta: &d})
	if err != nil {
		panic(err) // plain structs
	}
	return append(b, '\n')
}
