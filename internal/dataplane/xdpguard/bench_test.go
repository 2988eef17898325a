package xdpguard

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/statemesh/statemesh/internal/dataplane/guardplan"
	"github.com/statemesh/statemesh/internal/testenv"
)

// BenchmarkProgram is the guard program's own cost per packet, in the
// kernel (BPF_PROG_TEST_RUN, the JIT), by verdict path and number of peers:
//
//	go test -run '^$' -bench Program ./internal/dataplane/xdpguard
func BenchmarkProgram(b *testing.B) {
	testenv.RequireRoot(b)
	for _, n := range []int{10, 1000, 10000} {
		in := guardplan.Input{WireGuardPorts: []int{51820}, Local: []netip.Addr{self},
			HandshakesPerSource: 20, HandshakesTotal: 1000, WindowNanos: 1e9, EphemeralFrom: 32768, EphemeralTo: 60999}
		for i := range n {
			in.Peers = append(in.Peers, netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)}))
		}
		g, err := Load(Options{MaxSources: 16384, MaxTracked: 1024})
		if err != nil {
			b.Fatal(err)
		}
		e, _ := guardplan.Compile(in)
		if _, err := g.Set(e); err != nil {
			b.Fatal(err)
		}
		for _, c := range []struct {
			name  string
			frame []byte
		}{
			{"known-peer", udp(in.Peers[n/2], self, 51820, 51820, transportData())},
			{"junk-handshake", udp(stranger, self, 40000, 51820, handshakeInitiation())},
			{"transport-from-stranger", udp(stranger, self, 40000, 51820, transportData())},
			{"syn-closed-port", tcp(stranger, self, 40000, 8080, tcpSYN)},
		} {
			b.Run(fmt.Sprintf("peers=%d/%s", n, c.name), func(b *testing.B) {
				_, d, err := g.prog.Benchmark(c.frame, b.N, b.ResetTimer)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(d.Nanoseconds()), "ns/packet")
			})
		}
		g.Close()
	}
}
