package controller

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
)

// BenchmarkJoinFleet is the controller's work for one join into a
// 5,000-node cluster (4,999 enrolled, each with a watch stream) of the
// design-limit mesh, with the rest of the fleet spread over the other 199
// clusters: the registry applying the enrollment's store writes (token,
// slot, node record, WireGuard key), the topology change and queueing the
// delta to the cluster's streams, without the network. It must not depend
// on the fleet (issue 21 item 4: 10,000 vs 1,000,000 nodes within ±20 %).
// STATEMESH_BENCH_FLEETS (comma-separated) overrides the fleet sizes.
func BenchmarkJoinFleet(b *testing.B) {
	fleets := []int{10_000, 1_000_000}
	if v := os.Getenv("STATEMESH_BENCH_FLEETS"); v != "" {
		fleets = nil
		for f := range strings.SplitSeq(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatal(err)
			}
			fleets = append(fleets, n)
		}
	}
	data, p := designLimit(b)
	for _, fleet := range fleets {
		b.Run(fmt.Sprintf("fleet=%d", fleet), func(b *testing.B) { joinFleet(b, data, p, fleet) })
	}
}

func joinFleet(b *testing.B, specYAML []byte, p *plan.Plan, fleet int) {
	const cluster = 5000 // nodes once the joiner is in
	var clusters []*plan.Cluster
	for ri := range p.Regions {
		for ci := range p.Regions[ri].Clusters {
			clusters = append(clusters, &p.Regions[ri].Clusters[ci])
		}
	}
	if fleet < cluster || fleet > len(clusters)*cluster {
		b.Fatalf("fleet %d: between %d and %d nodes", fleet, cluster, len(clusters)*cluster)
	}
	target, others := clusters[0], clusters[1:]
	pj, _ := json.Marshal(p)
	kvs := []store.KV{{Key: keySpec, Value: encode(SpecRecord{YAML: string(specYAML)})}, {Key: keyPlan, Value: pj}}
	now := time.Now()
	add := func(c *plan.Cluster, slot, i int) {
		rec := benchNode(c, slot, i, now)
		kvs = append(kvs, store.KV{Key: nodeKey(rec.Name), Value: encode(rec)},
			store.KV{Key: slotKey(rec.Region, rec.Cluster, slot), Value: encode(SlotRecord{Node: rec.Name})})
	}
	for slot := range cluster - 1 {
		add(target, slot, slot)
	}
	for j := range fleet - cluster {
		add(others[j%len(others)], j/len(others), cluster+j)
	}
	st, err := bolt.Open(b.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	c, err := New(Config{Store: st})
	if err != nil {
		b.Fatal(err)
	}
	c.mu.Lock()
	c.loadLocked(kvs)
	c.setRevLocked(1)
	kvs = nil
	for slot := range cluster - 1 {
		n, ok := c.ix.Node(benchNode(target, slot, slot, now).Name)
		if !ok {
			b.Fatal("cluster node not indexed")
		}
		c.hub.subscribe(n)
	}
	c.mu.Unlock()
	if c.ix.Len() != fleet-1 {
		b.Fatalf("indexed %d nodes, want %d", c.ix.Len(), fleet-1)
	}
	runtime.GC()
	// The enrollment's writes, as the store's watch delivers them.
	joiner := benchNode(target, cluster-1, fleet, now)
	joiner.Name = "joiner"
	tok := encode(TokenRecord{ID: "bench", Region: target.Region, Cluster: target.Name, Role: "node", Uses: fleet + 1, Used: fleet})
	slotHeld := encode(SlotRecord{Node: joiner.Name})
	nodeRec := encode(joiner)
	rev := int64(1)
	apply := func(key string, value []byte, deleted bool) { c.applyLocked(key, value, deleted, rev) }
	// The enrollment's and the removal's map-revision markers, as the
	// watch loop applies them before the revision's other events.
	mark := func() {
		c.mapRevs.set(prefixMapRevClus+joiner.Region+"/"+joiner.Cluster, rev)
		c.mapRevs.set(keyMapRevSets, rev)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		rev++
		c.mu.Lock()
		mark()
		apply(tokenKey("bench"), tok, false)
		apply(wgKeyKey(joiner.PublicKey), []byte(nodeOwner(joiner.Name)), false)
		apply(slotKey(joiner.Region, joiner.Cluster, joiner.Slot), slotHeld, false)
		apply(nodeKey(joiner.Name), nodeRec, false)
		c.setRevLocked(rev)
		c.mu.Unlock()

		b.StopTimer()
		rev++
		c.mu.Lock()
		mark()
		apply(nodeKey(joiner.Name), nil, true)
		apply(slotKey(joiner.Region, joiner.Cluster, joiner.Slot), encode(SlotRecord{Node: joiner.Name, ReleasedAt: now}), false)
		apply(wgKeyKey(joiner.PublicKey), nil, true)
		c.setRevLocked(rev)
		for _, s := range c.hub.subs {
			s.frames.clear()
			s.overflow.Store(false)
		}
		c.mu.Unlock()
		b.StartTimer()
	}
	if n := c.unmarked.Load(); n > 0 {
		b.Fatalf("%d joins or removals published changes their markers do not cover", n)
	}
	b.ReportMetric(float64(c.hub.published.Load())/float64(b.N)/2, "frames/join")
	b.StopTimer()
	// What one stream costs when it must start from a snapshot (a restart
	// sends one to every stream: docs/scale.md).
	snapStart := time.Now()
	const snaps = 20
	var snapBytes int
	for range snaps {
		c.mu.RLock()
		m, _, err := c.snapshotLocked(benchNode(target, 0, 0, now).Name)
		c.mu.RUnlock()
		if err != nil {
			b.Fatal(err)
		}
		snapBytes = len(encodeSnapshot(m))
	}
	b.ReportMetric(float64(time.Since(snapStart).Microseconds())/snaps/1000, "snapshot-ms")
	b.ReportMetric(float64(snapBytes)/1024, "snapshot-KiB")
}
