package controller

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/topology"
)

func benchPlan(b *testing.B, nodes int) *plan.Plan {
	m, err := spec.Parse([]byte(fmt.Sprintf("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: b}\naddressing: {podIPv6: ['fd00::/48']}\nregions:\n  - name: r\n    clusters: [{name: c, maxNodes: %d}]\n", nodes)))
	if err != nil {
		b.Fatal(err)
	}
	p, err := plan.Compute(m, nil)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkJoinWork is the controller's own work when a node joins a
// cluster of n nodes, all watching: the topology change and queueing the
// (shared, encoded once) delta to every stream. It must grow linearly.
func BenchmarkJoinWork(b *testing.B) {
	for _, n := range []int{500, 1000, 2000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			p := benchPlan(b, n)
			n := n - 1 // n-1 watching, one joins
			pc, _ := p.Cluster("r", "c")
			ix := topology.New(p, topology.Options{})
			h := newHub(1024, 4)
			mk := func(i int) topology.Node {
				v4, v6, p4, p6 := pc.NodeAddresses(i)
				k, _ := netmap.GeneratePrivateKey()
				return topology.Node{Name: fmt.Sprintf("n%05d", i), Region: "r", Cluster: "c", Role: "node", State: topology.StateActive,
					PublicKey: k.PublicKey(), OverlayIPv4: v4, OverlayIPv6: v6, PodIPv4: p4, PodIPv6: p6,
					Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, 1}), 51820)}
			}
			for i := range n {
				node := mk(i)
				ix.Upsert(node)
				got, _ := ix.Node(node.Name)
				h.subscribe(got)
			}
			joiner := mk(n)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				changes, _ := ix.Upsert(joiner)
				h.publish(int64(i+1), changes)
				b.StopTimer()
				changes = ix.Remove(joiner.Name)
				h.publish(int64(i+1), changes)
				for _, s := range h.subs {
					s.frames.clear()
					s.overflow.Store(false)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/peer")
		})
	}
}
