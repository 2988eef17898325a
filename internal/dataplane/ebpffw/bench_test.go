package ebpffw

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/statemesh/statemesh/internal/dataplane/fwplan"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

// BenchmarkIngress is the ingress program's own cost per packet in the
// kernel (BPF_PROG_TEST_RUN), by path, at 10, 1,000 and 10,000 rules:
//
//	go test -run '^$' -bench Ingress -benchtime 1000000x ./internal/dataplane/ebpffw
func BenchmarkIngress(b *testing.B) {
	testenv.RequireRoot(b)
	for _, n := range []int{10, 1000, 10000} {
		pol := &netmap.Firewall{Sets: map[string][]netip.Prefix{}}
		for i := range n {
			set := fmt.Sprintf("seg_%d", i%50)
			pol.Sets[set] = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 65, byte(i % 50), 0}), 24)}
			pol.Rules = append(pol.Rules, netmap.FirewallRule{Set: set, Ports: []netmap.PortRange{{Proto: "tcp", From: 10000 + i, To: 10000 + i}}})
		}
		f, err := Load(Options{L2: 14})
		if err != nil {
			b.Fatal(err)
		}
		e, _ := fwplan.Compile(pol)
		if err := f.Set(e, State{Dests: []netip.Prefix{netip.PrefixFrom(node, 32)}, UDPWarm: true}); err != nil {
			b.Fatal(err)
		}
		last := netip.AddrFrom4([4]byte{100, 65, byte((n - 1) % 50), 9})
		for _, c := range []struct {
			name  string
			frame []byte
		}{
			{"denied", udp(netip.MustParseAddr("192.0.2.1"), node, 40000, 9, make([]byte, 64))},
			{"allowed-last-rule", tcp(last, node, 40000, uint16(10000+n-1), tcpSYN)},
		} {
			b.Run(fmt.Sprintf("rules=%d/%s", n, c.name), func(b *testing.B) {
				_, d, err := f.in.Benchmark(c.frame, b.N, b.ResetTimer)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(d.Nanoseconds()), "ns/packet")
			})
		}
		f.Close()
	}
}
