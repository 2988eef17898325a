package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
)

// BenchmarkRestartResume is what the only controller replica spends
// answering its streams' resumes after a restart: one 5,000-node cluster
// of the design-limit mesh (STATEMESH_BENCH_CLUSTER nodes) enrolled
// through the controller's store writes (markers included), then every
// node's certificate renewed (the store moves past every agent's
// revision, no map changes), then a replica started on the store and
// every node's stream opened from the revision of its map (the last
// join's), as agents do after a restart. "history-only" is the behaviour
// before persisted map revisions (Config.ResumeFromHistoryOnly: a replica
// that just started has no history, so every resume is a snapshot),
// "map-revisions" the default. Reported: bytes of the frames a resume
// starts with (KiB/resume), the process's CPU time for them (user+system,
// ms/resume, and s for the cluster), and the snapshots sent. Run with
// -benchtime=1x.
func BenchmarkRestartResume(b *testing.B) {
	size := 5000
	if v := os.Getenv("STATEMESH_BENCH_CLUSTER"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 {
			b.Fatalf("STATEMESH_BENCH_CLUSTER=%q: want an integer ≥ 2", v)
		}
		size = n
	}
	st, names, agentRev := seedRestart(b, size)
	defer st.Close()
	for _, mode := range []string{"history-only", "map-revisions"} {
		b.Run(fmt.Sprintf("%s/%d", mode, size), func(b *testing.B) {
			for range b.N {
				restartResume(b, st, names, agentRev, mode == "history-only")
			}
		})
	}
}

// seedRestart writes the spec, size nodes of the design-limit mesh's
// first cluster and then a renewal of each, all through markingStore. It
// returns the nodes' names and the revision of the last join (the
// revision of every agent's map).
func seedRestart(b *testing.B, size int) (store.Store, []string, int64) {
	data, p := designLimit(b)
	pj, _ := json.Marshal(p)
	st, err := bolt.Open(b.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	ms := markingStore{st}
	ctx := context.Background()
	if _, err := ms.Update(ctx, func(tx store.Tx) error {
		if err := tx.Put(keySpec, encode(SpecRecord{YAML: string(data)})); err != nil {
			return err
		}
		return tx.Put(keyPlan, pj)
	}); err != nil {
		b.Fatal(err)
	}
	target := &p.Regions[0].Clusters[0]
	now := time.Now()
	var recs []*NodeRecord
	for slot := range size {
		recs = append(recs, benchNode(target, slot, slot, now))
	}
	write := func(recs []*NodeRecord) int64 {
		var rev int64
		for i := 0; i < len(recs); i += 500 {
			part := recs[i:min(i+500, len(recs))]
			r, err := ms.Update(ctx, func(tx store.Tx) error {
				for _, n := range part {
					if err := tx.Put(nodeKey(n.Name), encode(n)); err != nil {
						return err
					}
					if err := tx.Put(slotKey(n.Region, n.Cluster, n.Slot), encode(SlotRecord{Node: n.Name})); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			rev = r
		}
		return rev
	}
	agentRev := write(recs)
	names := make([]string, len(recs))
	for i, n := range recs {
		names[i] = n.Name
		n.CertSerial = benchSerial(size + i) // a renewal
	}
	if renewed := write(recs); renewed <= agentRev {
		b.Fatalf("renewals at revision %d, not after the joins' %d", renewed, agentRev)
	}
	return st, names, agentRev
}

func restartResume(b *testing.B, st store.Store, names []string, from int64, historyOnly bool) {
	c, err := New(Config{Store: st, ResumeFromHistoryOnly: historyOnly})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := c.Bootstrap(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-c.Ready()
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	var bytes, snapshots int
	for _, name := range names {
		sub, initial, last, err := c.openStream(ctx, name, from)
		if err != nil {
			b.Fatalf("resuming %s: %v", name, err)
		}
		for _, f := range initial {
			bytes += len(f)
		}
		if last > 0 {
			snapshots++
		}
		c.closeStream(sub)
	}
	wall := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	n := float64(len(names))
	b.ReportMetric(float64(bytes)/1024/n, "KiB/resume")
	b.ReportMetric(float64(cpu.Microseconds())/1000/n, "cpu-ms/resume")
	b.ReportMetric(cpu.Seconds(), "cpu-s/cluster")
	b.ReportMetric(float64(snapshots), "snapshots")
	b.Logf("%d resumes from revision %d: %d snapshots, %.1f MiB, CPU %s, wall %s",
		len(names), from, snapshots, float64(bytes)/(1<<20), cpu.Round(time.Millisecond), wall.Round(time.Millisecond))
}
