package wg

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/netmap"
)

// bigMap is a map with n peers (a design-limit cluster has 5,000).
func bigMap(self *host, n int) netmap.Map {
	m := netmap.Map{
		Interface: netmap.Interface{Name: self.ifname, Addresses: []netip.Prefix{netip.PrefixFrom(self.ovl, 32)}, MTU: 1420, ListenPort: 51820},
		Routes:    []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
	}
	for i := range n {
		k, _ := netmap.GeneratePrivateKey()
		a := netip.AddrFrom4([4]byte{100, 65, byte(i >> 8), byte(i)})
		m.Peers = append(m.Peers, netmap.Peer{Name: fmt.Sprintf("p%05d", i), PublicKey: k.PublicKey(),
			Endpoint:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, 77, byte(10 + i%200)}), uint16(40000+i%1000)),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(a, 32), netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 25)}})
	}
	return m.Normalize()
}

// BenchmarkApply measures applying a full map of n peers onto a fresh
// userspace device (full), one peer added or removed on top of it as the
// agent does for a delta (delta: must cost the same at 5,000 peers as at
// 50), and the agent's periodic full reconcile of an unchanged device
// (resync: reads and diffs everything, changes nothing).
func BenchmarkApply(b *testing.B) {
	for _, n := range []int{50, 5000} {
		b.Run(fmt.Sprintf("full/%d", n), func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				a, _ := newPairB(b)
				m := bigMap(a, n)
				b.StartTimer()
				if _, err := a.dev.Apply(context.Background(), m, netmap.Map{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("delta/%d", n), func(b *testing.B) {
			a, _ := newPairB(b)
			m := bigMap(a, n)
			if _, err := a.dev.Apply(context.Background(), m, netmap.Map{}); err != nil {
				b.Fatal(err)
			}
			extra := bigMap(a, 1).Peers[0]
			extra.Name = "zz-extra"
			extra.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("100.66.0.1/32")}
			grown := m.Clone()
			grown.Peers = append(grown.Peers, extra)
			grown = grown.Normalize()
			b.ResetTimer()
			var ops int
			start := time.Now()
			for i := range b.N {
				from, to := m, grown
				if i%2 == 1 {
					from, to = grown, m
				}
				r, err := a.dev.ApplyDelta(context.Background(), from, to, netmap.Diff(from, to))
				if err != nil {
					b.Fatal(err)
				}
				ops += r.PeerOps
			}
			if ops != b.N {
				b.Fatalf("%d peer operations for %d one-peer deltas", ops, b.N)
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "µs/delta")
		})
		b.Run(fmt.Sprintf("resync/%d", n), func(b *testing.B) {
			a, _ := newPairB(b)
			m := bigMap(a, n)
			if _, err := a.dev.Apply(context.Background(), m, netmap.Map{}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				r, err := a.dev.Apply(context.Background(), m, m)
				if err != nil {
					b.Fatal(err)
				}
				if !r.NoChanges {
					b.Fatalf("resync of an unchanged device changed something: %+v", r)
				}
			}
		})
	}
}
