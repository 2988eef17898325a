package xdpguard

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/statemesh/statemesh/internal/dataplane/firewall"
	"github.com/statemesh/statemesh/internal/dataplane/guardplan"
	"github.com/statemesh/statemesh/internal/testenv"
)

// TestFloodDropCost measures, in one run, what a junk handshake flood
// costs a core when the XDP guard drops it and when the node's nftables
// table does (BENCHMARKS.md, issue 22). The flood is bounded (Packets per
// measurement) and runs between two smx- namespaces over a veth pair; the
// sender is pinned to one CPU, where the veth's receive path runs too, so
// the CPU time of the sender thread plus that CPU's ksoftirqd is the whole
// cost of sending and dropping. Modes, interleaved round by round:
//
//	sender: the receiving veth down: the packet dies at transmit (what
//	        sending alone costs; subtracted from the others)
//	floor: an XDP program that drops everything (the least a drop costs)
//	guard: the guard, the flood from an unknown source over its limit
//	nft:   no XDP; StateMesh's table (firewall.Render, a node) drops it
//
// each at 10, 1,000 and 10,000 peers (the guard's sources, nft's peer set).
//
//	STATEMESH_BENCH=1 go test -run TestFloodDropCost -v -timeout 10m ./internal/dataplane/xdpguard
func TestFloodDropCost(t *testing.T) {
	if os.Getenv("STATEMESH_BENCH") == "" {
		t.Skip("set STATEMESH_BENCH=1: a bounded flood between smx- namespaces, about a minute")
	}
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	a, b := vethPair(t, "f")
	// A static neighbour: the floor program drops ARP too.
	mac := strings.Fields(sh(t, "ip", "-n", b, "-o", "link", "show", "b0"))
	for i, f := range mac {
		if f == "link/ether" {
			sh(t, "ip", "-n", a, "neigh", "replace", "10.99.0.1", "lladdr", mac[i+1], "dev", "a0", "nud", "permanent")
		}
	}
	packets := 200_000
	if s := os.Getenv("STATEMESH_BENCH_PACKETS"); s != "" {
		packets, _ = strconv.Atoi(s)
	}
	rounds := 5
	if s := os.Getenv("STATEMESH_BENCH_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	cpu := runtime.NumCPU() - 1
	// Generic XDP by default: on a veth both paths then start from the
	// same socket buffer (STATEMESH_BENCH_XDP=native for the veth driver's).
	mode := "generic"
	if os.Getenv("STATEMESH_BENCH_XDP") == "native" {
		mode = "native"
	}

	floor, err := dropAll()
	if err != nil {
		t.Fatal(err)
	}
	defer floor.Close()

	type setup struct {
		peers int
		guard *Guard
		nft   string
	}
	var setups []setup
	for _, n := range []int{10, 1000, 10000} {
		in := guardplan.Input{WireGuardPorts: []int{51820}, Local: []netip.Addr{netip.MustParseAddr("10.99.0.1")},
			HandshakesPerSource: 20, HandshakesTotal: 1000, WindowNanos: 1e9, EphemeralFrom: 32768, EphemeralTo: 60999}
		st := firewall.State{Interface: "sm0", ListenPort: 51820}
		for i := range n {
			p := netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)})
			in.Peers = append(in.Peers, p)
			st.Peers = append(st.Peers, p)
		}
		g, err := Load(Options{MaxSources: 16384, MaxTracked: 1024})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		e, err := guardplan.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.Set(e); err != nil {
			t.Fatal(err)
		}
		fake := knftables.NewFake(knftables.InetFamily, firewall.Table)
		if err := firewall.NewWith(fake, nil).Apply(context.Background(), st); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "table.nft")
		if err := os.WriteFile(path, []byte(fake.Dump()), 0o600); err != nil {
			t.Fatal(err)
		}
		setups = append(setups, setup{n, g, path})
	}

	// ns per packet, per mode and size, over the rounds.
	results := map[string][]float64{}
	var guardDrops, nftDrops uint64
	for range rounds {
		for _, s := range setups {
			key := func(mode string) string { return fmt.Sprintf("%s/%d", mode, s.peers) }
			// floor
			var l link.Link
			inNS(t, b, func() error {
				ifi, err := net.InterfaceByName("b0")
				if err != nil {
					return err
				}
				flags := link.XDPGenericMode
				if mode == "native" {
					flags = link.XDPDriverMode
				}
				l, err = link.AttachXDP(link.XDPOptions{Program: floor, Interface: ifi.Index, Flags: flags})
				return err
			})
			// sender: b0 down, so the veth drops each packet at transmit:
			// what sending alone costs.
			sh(t, "ip", "-n", b, "link", "set", "b0", "down")
			results[key("sender")] = append(results[key("sender")], flood(t, a, cpu, packets))
			sh(t, "ip", "-n", b, "link", "set", "b0", "up")
			t.Logf("%d peers: floor", s.peers)
			results[key("floor")] = append(results[key("floor")], flood(t, a, cpu, packets))
			t.Logf("%d peers: guard", s.peers)
			l.Close()
			// guard
			before, _ := s.guard.Counters()
			inNS(t, b, func() error { return s.guard.Attach("b0", mode) })
			results[key("guard")] = append(results[key("guard")], flood(t, a, cpu, packets))
			after, _ := s.guard.Counters()
			guardDrops += after[VerdictWGRateLimited] - before[VerdictWGRateLimited]
			s.guard.detach()
			// nft
			t.Logf("%d peers: nft", s.peers)
			sh(t, "ip", "netns", "exec", b, "nft", "-f", s.nft)
			results[key("nft")] = append(results[key("nft")], flood(t, a, cpu, packets))
			out := sh(t, "ip", "netns", "exec", b, "nft", "list", "chain", "inet", "statemesh", "input")
			nftDrops += counterPackets(out)
			sh(t, "ip", "netns", "exec", b, "nft", "delete", "table", "inet", "statemesh")
		}
	}
	var rep strings.Builder
	fmt.Fprintf(&rep, "CPU ns per flood packet on CPU %d (sending thread + ksoftirqd), %s XDP, median of %d rounds of %d packets;\n", cpu, mode, rounds, packets)
	fmt.Fprintf(&rep, "receive = mode - sender in the same round (what the receiving side spends to drop one packet);\nnft/guard is the median of the rounds' ratios\n")
	fmt.Fprintf(&rep, "%-6s %7s %7s %7s %7s | %12s %12s %12s | %14s %14s %9s\n", "peers", "sender", "floor", "guard", "nft",
		"floor recv", "guard recv", "nft recv", "guard drops/s", "nft drops/s", "nft/guard")
	for _, s := range setups {
		get := func(mode string) []float64 { return results[fmt.Sprintf("%s/%d", mode, s.peers)] }
		snd, f, g, n := get("sender"), get("floor"), get("guard"), get("nft")
		// Paired within each round (the same minute of a shared machine),
		// then the median over the rounds.
		var fr, gr, nr, ratio []float64
		for i := range snd {
			fr = append(fr, max(f[i]-snd[i], 1))
			gr = append(gr, max(g[i]-snd[i], 1))
			nr = append(nr, max(n[i]-snd[i], 1))
			ratio = append(ratio, nr[i]/gr[i])
		}
		fmt.Fprintf(&rep, "%-6d %7.0f %7.0f %7.0f %7.0f | %12.0f %12.0f %12.0f | %13.2fM %13.2fM %9.2f\n", s.peers,
			median(snd), median(f), median(g), median(n), median(fr), median(gr), median(nr), 1e3/median(gr), 1e3/median(nr), median(ratio))
	}
	fmt.Fprintf(&rep, "drops counted: guard %d (wg_ratelimited), nft %d (the input chain's counter drop)\n", guardDrops, nftDrops)
	t.Log("\n" + rep.String())
	if guardDrops < uint64(rounds*len(setups)*packets*9/10) {
		t.Errorf("the guard counted %d drops of %d packets sent", guardDrops, rounds*len(setups)*packets)
	}
}

// detach removes the guard from its interfaces, keeping program and maps.
func (g *Guard) detach() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.lnks {
		l.Close()
	}
	g.lnks, g.ifcs = nil, nil
}

// dropAll is an XDP program that drops every packet.
func dropAll() (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "Apache-2.0", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, xdpDrop), asm.Return(),
	}})
}

// flood sends n handshake-initiation-shaped datagrams from the unknown
// source 10.99.0.3 in namespace ns to 10.99.0.1:51820, on one CPU, and
// returns the CPU nanoseconds per packet spent by the sending thread and
// by that CPU's ksoftirqd (the receive path runs in one or the other).
func flood(t *testing.T, ns string, cpu, n int) float64 {
	t.Helper()
	start := time.Now()
	defer func() { t.Logf("flood of %d took %v", n, time.Since(start).Round(time.Millisecond)) }()
	var perPacket float64
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread leaves with the goroutine
		err := func() error {
			h, err := netns.GetFromName(ns)
			if err != nil {
				return err
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				return err
			}
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				return err
			}
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.99.0.3")}, &net.UDPAddr{IP: net.ParseIP("10.99.0.1"), Port: 51820})
			if err != nil {
				return err
			}
			defer c.Close()
			payload := handshakeInitiation()
			soft := ksoftirqd(cpu)
			var t0 unix.Timespec
			unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t0)
			s0 := schedNS(soft)
			// sendmmsg, 64 datagrams a call: the sender's share of the cost
			// as small as a socket allows.
			pc := ipv4.NewPacketConn(c)
			msgs := make([]ipv4.Message, 64)
			for i := range msgs {
				msgs[i].Buffers = [][]byte{payload}
			}
			for sent := 0; sent < n; {
				k, err := pc.WriteBatch(msgs[:min(len(msgs), n-sent)], 0)
				if err != nil {
					return fmt.Errorf("after %d datagrams: %w", sent, err)
				}
				sent += k
			}
			var t1 unix.Timespec
			unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t1)
			time.Sleep(50 * time.Millisecond) // let deferred softirq work finish
			s1 := schedNS(soft)
			perPacket = float64(t1.Nano()-t0.Nano()+s1-s0) / float64(n)
			return nil
		}()
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return perPacket
}

// counterPackets sums the "counter packets N" of an nft listing.
func counterPackets(listing string) uint64 {
	var total uint64
	f := strings.Fields(listing)
	for i := 0; i+2 < len(f); i++ {
		if f[i] == "counter" && f[i+1] == "packets" {
			n, _ := strconv.ParseUint(f[i+2], 10, 64)
			total += n
		}
	}
	return total
}
