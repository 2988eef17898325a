package controller

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
	"github.com/statemesh/statemesh/internal/topology"
)

// designLimit returns the design-limit mesh's spec and plan.
func designLimit(b testing.TB) ([]byte, *plan.Plan) {
	data, err := os.ReadFile("../../examples/design-limit-ipv6.yaml")
	if err != nil {
		b.Fatal(err)
	}
	m, err := spec.Parse(data)
	if err != nil {
		b.Fatal(err)
	}
	p, err := plan.Compute(m, nil)
	if err != nil {
		b.Fatal(err)
	}
	return data, p
}

// designLimitNodes calls fn with the node and slot records of n enrolled
// nodes spread over the plan's clusters (node i in cluster i mod 200), in
// order.
func designLimitNodes(p *plan.Plan, n int, fn func(rec *NodeRecord, slot SlotRecord)) {
	var clusters []*plan.Cluster
	for ri := range p.Regions {
		for ci := range p.Regions[ri].Clusters {
			clusters = append(clusters, &p.Regions[ri].Clusters[ci])
		}
	}
	now := time.Now()
	for i := range n {
		c := clusters[i%len(clusters)]
		fn(benchNode(c, i/len(clusters), i, now), SlotRecord{Node: fmt.Sprintf("%s-%s-n%04d", c.Region, c.Name, i/len(clusters))})
	}
}

// benchNode is an enrolled node of cluster c at slot, its key, endpoint
// and certificate derived from i. Its certificate serial and key hash have
// the sizes enrollment writes (128-bit serial in hex, SHA-256 in hex).
func benchNode(c *plan.Cluster, slot, i int, now time.Time) *NodeRecord {
	var k netmap.Key
	copy(k[:], strconv.Itoa(i))
	rec := NodeRecord{Name: fmt.Sprintf("%s-%s-n%04d", c.Region, c.Name, slot), Region: c.Region, Cluster: c.Name, Role: "node",
		Class: "weak", State: topology.StateActive, PublicKey: k, Slot: slot, TokenID: "bench", EnrolledAt: now,
		CertSerial: benchSerial(i), CertKey: sha256.Sum256([]byte(strconv.Itoa(i))),
		Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 51820)}
	rec.OverlayIPv4, rec.OverlayIPv6, rec.PodIPv4, rec.PodIPv6 = c.NodeAddresses(slot)
	return &rec
}

// benchSerial is a 127-bit serial like the CA's random ones (32 hex
// digits in the record), derived from i.
func benchSerial(i int) CertSerial {
	sum := sha256.Sum256([]byte(fmt.Sprint("serial", i)))
	var s CertSerial
	copy(s[:], sum[:])
	s[0] = s[0]&0x7f | 0x40
	return s
}

// seedDesignLimit writes n enrolled nodes spread over the design-limit
// mesh's clusters into a store, with the spec and plan.
func seedDesignLimit(b *testing.B, st store.Store, n int) {
	data, p := designLimit(b)
	pj, _ := json.Marshal(p)
	ctx := context.Background()
	if _, err := st.Update(ctx, func(tx store.Tx) error {
		tx.Put(keySpec, encode(SpecRecord{YAML: string(data)}))
		return tx.Put(keyPlan, pj)
	}); err != nil {
		b.Fatal(err)
	}
	type rec struct {
		node *NodeRecord
		slot SlotRecord
	}
	const batch = 10000
	var pending []rec
	flush := func() {
		if _, err := st.Update(ctx, func(tx store.Tx) error {
			for _, r := range pending {
				if err := tx.Put(nodeKey(r.node.Name), encode(r.node)); err != nil {
					return err
				}
				if err := tx.Put(slotKey(r.node.Region, r.node.Cluster, r.node.Slot), encode(r.slot)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		pending = pending[:0]
	}
	designLimitNodes(p, n, func(n *NodeRecord, s SlotRecord) {
		if pending = append(pending, rec{n, s}); len(pending) == batch {
			flush()
		}
	})
	flush()
}

// cpuTime is the CPU time the process has used (user and system, every
// thread): on a shared machine, a load's CPU time varies less than its
// wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkRegistryLoad: a controller restarting on an embedded store that
// holds 1,000,000 nodes (the design limit): time to load the registry and
// build the topology index, and heap bytes per node. Run with
// -benchtime=1x; STATEMESH_BENCH_NODES overrides the count.
func BenchmarkRegistryLoad(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("STATEMESH_BENCH_NODES")); err == nil {
		n = v
	}
	dir := b.TempDir()
	st, err := bolt.Open(dir, bolt.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	seedStart := time.Now()
	seedDesignLimit(b, st, n)
	b.Logf("seeded %d nodes in %s", n, time.Since(seedStart).Round(time.Millisecond))
	st.Close()
	if fi, err := os.Stat(dir + "/" + bolt.FileName); err == nil {
		b.ReportMetric(float64(fi.Size())/float64(n), "disk-B/node")
	}
	b.ResetTimer()
	for range b.N {
		st, err := bolt.Open(dir, bolt.Options{})
		if err != nil {
			b.Fatal(err)
		}
		before := heapInUse()
		cpu0 := cpuTime()
		start := time.Now()
		c, err := New(Config{Store: st})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Bootstrap(context.Background(), "bench"); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go c.Run(ctx)
		<-c.Ready()
		load := time.Since(start)
		loadCPU := cpuTime() - cpu0
		after := heapInUse()
		if got := len(c.Nodes("", "")); got != n {
			b.Fatalf("loaded %d nodes, want %d", got, n)
		}
		b.ReportMetric(load.Seconds(), "load-s")
		b.ReportMetric(loadCPU.Seconds(), "load-cpu-s")
		b.ReportMetric(float64(after-before)/float64(n), "heap-B/node")
		b.Logf("%d nodes: registry loaded in %s (%s of CPU), %d heap bytes per node", n, load.Round(time.Millisecond), loadCPU.Round(time.Millisecond), (after-before)/uint64(n))
		cancel()
		st.Close()
	}
}
