package controller

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/store"
	etcdstore "github.com/statemesh/statemesh/internal/store/etcd"
	"github.com/statemesh/statemesh/internal/store/etcd/etcdtest"
)

// The controller's writes at the design limit (docs/scale.md derives the
// rates): each operation replays the store transactions the controller
// makes for it, with the same keys, reads and record sizes.
type storeOp struct {
	name string
	// run replays one operation; writer w of writers picks nodes of its
	// own (one node's operations do not overlap).
	run func(ctx context.Context, st Store, r *rand.Rand, w int) error
}

// storeScenario is a mix of operations per second for 1,000,000 nodes.
type storeScenario struct {
	name  string
	rates map[string]float64 // operation → per second
}

// The rates of docs/scale.md: 1,000,000 nodes, 40 gateways, certificates of
// 24 h renewed at two thirds of their life, 10 % of the fleet replaced a
// day, and a recovery in which the whole fleet enrolls within an hour.
var storeScenarios = []storeScenario{
	{"steady-weak", map[string]float64{"enroll": 1.2, "remove": 1.2, "renew": 17.4, "heartbeat": 40}},
	{"recovery", map[string]float64{"enroll": 278, "renew": 17.4, "heartbeat": 40}},
	{"steady-strong-10m", map[string]float64{"enroll": 1.2, "remove": 1.2, "renew": 17.4, "heartbeat": 40, "reattest": 1_000_000.0 / 600}},
	{"steady-strong-30s", map[string]float64{"enroll": 1.2, "remove": 1.2, "renew": 17.4, "heartbeat": 40, "reattest": 1_000_000.0 / 30}},
}

// storeLoadFixture is what the operations work on: nodes seeded in a few
// full clusters of the design-limit plan.
type storeLoadFixture struct {
	clusters []*plan.Cluster
	// enrolling holds a cluster while one of its enrollments runs: at the
	// recovery's rate a cluster sees one enrollment a second or so, each
	// taking a fraction of that, so its enrollments do not overlap.
	enrolling []sync.Mutex
	nodes     []*NodeRecord
	joins     atomic.Int64
}

const (
	storeLoadClusters = 16 // full 5,000-node clusters seeded
	storeLoadWriters  = 64 // concurrent writers (API calls in flight)
)

func (f *storeLoadFixture) seed(b *testing.B, st Store, p *plan.Plan) {
	for ri := range p.Regions {
		for ci := range p.Regions[ri].Clusters {
			if len(f.clusters) < storeLoadClusters {
				f.clusters = append(f.clusters, &p.Regions[ri].Clusters[ci])
			}
		}
	}
	f.enrolling = make([]sync.Mutex, len(f.clusters))
	now := time.Now()
	for ci, c := range f.clusters {
		for slot := range c.MaxNodes {
			f.nodes = append(f.nodes, benchNode(c, slot, ci*c.MaxNodes+slot, now))
		}
	}
	ctx := context.Background()
	for start := 0; start < len(f.nodes); start += 300 {
		if _, err := st.Update(ctx, func(tx store.Tx) error {
			for _, n := range f.nodes[start:min(start+300, len(f.nodes))] {
				tx.Put(nodeKey(n.Name), encode(n))
				tx.Put(slotKey(n.Region, n.Cluster, n.Slot), encode(SlotRecord{Node: n.Name}))
				tx.Put(wgKeyKey(n.PublicKey), []byte(nodeOwner(n.Name)))
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := st.Update(ctx, func(tx store.Tx) error {
		for _, c := range f.clusters {
			tx.Put(tokenKey("tok-"+c.Name+c.Region), encode(TokenRecord{ID: "tok-" + c.Name + c.Region, SecretHash: make([]byte, 32), Region: c.Region, Cluster: c.Name, Role: "node", CreatedAt: now, ExpiresAt: now.Add(time.Hour), Uses: 1 << 30}))
		}
		for g := range 40 {
			tx.Put(healthKey(fmt.Sprintf("gw%02d", g)), encode(HealthRecord{Healthy: true, LastHeartbeat: now, Since: now}))
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}

func (f *storeLoadFixture) ops() []storeOp {
	node := func(r *rand.Rand, w int) *NodeRecord {
		return f.nodes[r.IntN(len(f.nodes)/storeLoadWriters)*storeLoadWriters+w]
	}
	rewrite := func(ctx context.Context, st Store, name string, change func(*NodeRecord)) error {
		_, err := st.Update(ctx, func(tx store.Tx) error {
			kv, err := tx.Get(nodeKey(name))
			if err != nil {
				return err
			}
			rec, err := decode[NodeRecord](kv.Value)
			if err != nil {
				return err
			}
			change(&rec)
			return tx.Put(nodeKey(name), encode(rec))
		})
		return err
	}
	return []storeOp{
		// Enroll: token, key and the cluster's slots read; key, token,
		// slot and node written (enroll.go). The joiner rewrites a seeded
		// slot, so the slot list it reads stays 5,000 long.
		{"enroll", func(ctx context.Context, st Store, r *rand.Rand, w int) error {
			ci := r.IntN(len(f.clusters))
			f.enrolling[ci].Lock()
			defer f.enrolling[ci].Unlock()
			c := f.clusters[ci]
			j := f.joins.Add(1)
			rec := *benchNode(c, int(j)%c.MaxNodes, 10_000_000+int(j), time.Now())
			rec.Name = "join-" + strconv.FormatInt(j, 10)
			_, err := st.Update(ctx, func(tx store.Tx) error {
				kv, err := tx.Get(tokenKey("tok-" + c.Name + c.Region))
				if err != nil {
					return err
				}
				t, _ := decode[TokenRecord](kv.Value)
				if _, err := tx.Get(wgKeyKey(rec.PublicKey)); !errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("key in use: %v", err)
				}
				if _, err := tx.List(slotPrefix(c.Region, c.Name)); err != nil {
					return err
				}
				t.Used++
				tx.Put(wgKeyKey(rec.PublicKey), []byte(nodeOwner(rec.Name)))
				tx.Put(tokenKey(t.ID), encode(t))
				tx.Put(slotKey(rec.Region, rec.Cluster, rec.Slot), encode(SlotRecord{Node: rec.Name}))
				return tx.Put(nodeKey(rec.Name), encode(rec))
			})
			return err
		}},
		// Remove (admin.go): node, health and key deleted, slot released.
		// Replayed on a node that is absent, so the fleet stays whole.
		{"remove", func(ctx context.Context, st Store, r *rand.Rand, w int) error {
			n := node(r, w)
			_, err := st.Update(ctx, func(tx store.Tx) error {
				tx.Get(nodeKey("gone-" + n.Name))
				tx.Delete(nodeKey("gone-" + n.Name))
				tx.Delete(healthKey("gone-" + n.Name))
				tx.Delete(wgKeyKey(netmap.Key{}))
				return tx.Put(slotKey(n.Region, n.Cluster, 9_999), encode(SlotRecord{Node: "gone-" + n.Name, ReleasedAt: time.Now()}))
			})
			return err
		}},
		// Renew (health.go): the node record with a new serial and key.
		{"renew", func(ctx context.Context, st Store, r *rand.Rand, w int) error {
			return rewrite(ctx, st, node(r, w).Name, func(n *NodeRecord) { n.CertSerial = benchSerial(r.Int()) })
		}},
		// Heartbeat (health.go): a gateway's health record.
		{"heartbeat", func(ctx context.Context, st Store, r *rand.Rand, w int) error {
			name := fmt.Sprintf("gw%02d", w%40)
			_, err := st.Update(ctx, func(tx store.Tx) error {
				kv, err := tx.Get(healthKey(name))
				if err != nil {
					return err
				}
				h, _ := decode[HealthRecord](kv.Value)
				h.LastHeartbeat = time.Now()
				return tx.Put(healthKey(name), encode(h))
			})
			return err
		}},
		// Re-attestation (attestation.go): the challenge opens a session,
		// the evidence consumes it, and the node record takes the time.
		{"reattest", func(ctx context.Context, st Store, r *rand.Rand, w int) error {
			n := node(r, w)
			id := fmt.Sprintf("%032x", r.Uint64())
			sess := SessionRecord{Nonce: make([]byte, 32), AKArea: make([]byte, 280), EKHash: fmt.Sprintf("%064x", 2), Node: n.Name, ExpiresAt: time.Now().Add(time.Minute)}
			if _, err := st.Update(ctx, func(tx store.Tx) error {
				if kv, err := tx.Get(openSessionKey(n.Name)); err == nil {
					tx.Delete(sessionKey(string(kv.Value)))
				}
				tx.Put(openSessionKey(n.Name), []byte(id))
				return tx.Put(sessionKey(id), encode(sess))
			}); err != nil {
				return err
			}
			if _, err := st.Update(ctx, func(tx store.Tx) error {
				if _, err := tx.Get(sessionKey(id)); err != nil {
					return err
				}
				tx.Delete(sessionKey(id))
				if kv, err := tx.Get(openSessionKey(n.Name)); err == nil && string(kv.Value) == id {
					tx.Delete(openSessionKey(n.Name))
				}
				return nil
			}); err != nil {
				return err
			}
			return rewrite(ctx, st, n.Name, func(n *NodeRecord) { n.AttestedAt = time.Now() })
		}},
	}
}

// BenchmarkStoreLoad replays the controller's store writes at 1,000,000
// nodes (docs/scale.md) against a real etcd on this machine: for each
// scenario, as many concurrent writers as the controller's API would run
// issue the scenario's mix as fast as etcd takes it for a bounded time, and
// the margin is the rate reached over the rate the scenario needs. Needs
// STATEMESH_BENCH_ETCD=1 (it starts etcd); STATEMESH_BENCH_STORE_SECONDS
// bounds each scenario (default 10).
func BenchmarkStoreLoad(b *testing.B) {
	if os.Getenv("STATEMESH_BENCH_ETCD") == "" {
		b.Skip("set STATEMESH_BENCH_ETCD=1 to start etcd")
	}
	seconds := 10.0
	if v, err := strconv.ParseFloat(os.Getenv("STATEMESH_BENCH_STORE_SECONDS"), 64); err == nil {
		seconds = v
	}
	cluster := etcdtest.Start(b, 1)
	st, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: cluster.Endpoints(), Prefix: "/storeload/"})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	_, p := designLimit(b)
	f := &storeLoadFixture{}
	f.seed(b, st, p)
	ops := map[string]storeOp{}
	for _, op := range f.ops() {
		ops[op.name] = op
	}
	for _, sc := range storeScenarios {
		b.Run(sc.name, func(b *testing.B) {
			var names []string
			var need float64
			for name, r := range sc.rates {
				names = append(names, name)
				need += r
			}
			slices.Sort(names)
			// Pick operations in the scenario's proportions.
			pick := func(r *rand.Rand) storeOp {
				x := r.Float64() * need
				for _, name := range names {
					if x -= sc.rates[name]; x < 0 {
						return ops[name]
					}
				}
				return ops[names[len(names)-1]]
			}
			const writers = storeLoadWriters
			var done atomic.Int64
			var failed atomic.Int64
			var errMu sync.Mutex
			var firstErr error
			lat := make([][]time.Duration, writers)
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds*float64(time.Second)))
			defer cancel()
			start := time.Now()
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(w), 21))
					for ctx.Err() == nil {
						t0 := time.Now()
						err := pick(r).run(ctx, st, r, w)
						if ctx.Err() != nil {
							return
						}
						if err != nil {
							errMu.Lock()
							if failed.Add(1) == 1 {
								firstErr = err
							}
							errMu.Unlock()
							continue
						}
						done.Add(1)
						lat[w] = append(lat[w], time.Since(t0))
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			if n := failed.Load(); n > 0 {
				b.Logf("%d operations failed, first: %v", n, firstErr)
			}
			all := slices.Concat(lat...)
			slices.Sort(all)
			rate := float64(done.Load()) / elapsed.Seconds()
			b.ReportMetric(rate, "ops/s")
			b.ReportMetric(need, "need-ops/s")
			b.ReportMetric(rate/need, "margin")
			if len(all) > 0 {
				b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
			}
			b.Logf("%s: %.0f operations/s reached, %.0f needed at 1,000,000 nodes: margin %.2f×", sc.name, rate, need, rate/need)
		})
	}
}
