package ebpffw

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/statemesh/statemesh/internal/dataplane/firewall"
	"github.com/statemesh/statemesh/internal/dataplane/fwplan"
	"github.com/statemesh/statemesh/internal/dataplane/pkttest"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

// TestOverlayCost measures, in one run, the per-packet cost of the overlay
// policy on the WireGuard side with the eBPF firewall (in front of the
// table with the mark rule) and with nftables alone, at 10, 1,000 and
// 10,000 policy rules (BENCHMARKS.md, issue 22). Packets are injected
// through a TUN device (an L3 interface like WireGuard's) in an smx-
// namespace by a thread pinned to one CPU, from a source the policy does
// not admit: nftables walks its whole overlay chain, the program does two
// lookups. The cost is the writing thread's CPU time plus that CPU's
// ksoftirqd; "floor" is a tc program that drops everything, subtracted in
// the same round.
//
//	STATEMESH_BENCH=1 go test -run TestOverlayCost -v -timeout 10m ./internal/dataplane/ebpffw
func TestOverlayCost(t *testing.T) {
	if os.Getenv("STATEMESH_BENCH") == "" {
		t.Skip("set STATEMESH_BENCH=1: a bounded packet run in an smx- namespace, about a minute")
	}
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	packets, rounds := 20_000, 5
	if s := os.Getenv("STATEMESH_BENCH_PACKETS"); s != "" {
		packets, _ = strconv.Atoi(s)
	}
	if s := os.Getenv("STATEMESH_BENCH_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	cpu := runtime.NumCPU() - 1
	ns := fmt.Sprintf("smx-%d-fwc", os.Getpid())
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, c := range [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "tuntap", "add", "dev", "tun0", "mode", "tun"},
		{"ip", "-n", ns, "addr", "add", "100.64.0.5/32", "dev", "tun0"},
		{"ip", "-n", ns, "link", "set", "tun0", "up"},
		{"ip", "-n", ns, "route", "add", "192.0.2.0/24", "dev", "tun0"},
	} {
		sh(t, c...)
	}
	frame := ipv4Checksum(udp(netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("100.64.0.5"), 40000, 9, make([]byte, 64))[14:])
	floor, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Apache-2.0", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, tcShot), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer floor.Close()

	type setup struct {
		rules    int
		fw       *Firewall
		nft, mrk string
	}
	var setups []setup
	for _, n := range []int{10, 1000, 10000} {
		pol := &netmap.Firewall{Sets: map[string][]netip.Prefix{}}
		for i := range n {
			set := fmt.Sprintf("seg_%d", i%50)
			pol.Sets[set] = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 65, byte(i % 50), 0}), 24)}
			pol.Rules = append(pol.Rules, netmap.FirewallRule{Comment: fmt.Sprint("rule ", i), Set: set, Ports: []netmap.PortRange{{Proto: "tcp", From: 10000 + i, To: 10000 + i}}})
		}
		f, err := Load(Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		e, err := fwplan.Compile(pol)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Set(e, State{Dests: []netip.Prefix{netip.MustParsePrefix("100.64.0.5/32")}, UDPWarm: true}); err != nil {
			t.Fatal(err)
		}
		file := func(mark uint32) string {
			fake := knftables.NewFake(knftables.InetFamily, firewall.Table)
			if err := firewall.NewWith(fake, nil).Apply(context.Background(), firewall.State{Interface: "tun0", ListenPort: 51820, Policy: pol, EBPFMark: mark}); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(t.TempDir(), "t.nft")
			os.WriteFile(p, []byte(fake.Dump()), 0o600)
			return p
		}
		setups = append(setups, setup{n, f, file(0), file(DefaultMark)})
	}

	var tunFD int
	inNS(t, ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, _ := unix.NewIfreq("tun0")
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		tunFD = fd
		return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	})
	defer unix.Close(tunFD)
	inject := func() float64 {
		var per float64
		done := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				done <- err
				return
			}
			soft := ksoftirqd(cpu)
			var t0, t1 unix.Timespec
			unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t0)
			s0 := schedNS(soft)
			for range packets {
				if _, err := unix.Write(tunFD, frame); err != nil {
					done <- err
					return
				}
			}
			unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t1)
			s1 := schedNS(soft)
			per = float64(t1.Nano()-t0.Nano()+s1-s0) / float64(packets)
			done <- nil
		}()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return per
	}
	res := map[string][]float64{}
	for range rounds {
		for _, s := range setups {
			k := func(m string) string { return fmt.Sprintf("%s/%d", m, s.rules) }
			var l link.Link
			inNS(t, ns, func() error {
				ifi, err := net.InterfaceByName("tun0")
				if err != nil {
					return err
				}
				l, err = link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: floor, Attach: ebpf.AttachTCXIngress})
				return err
			})
			res[k("floor")] = append(res[k("floor")], inject())
			l.Close()
			sh(t, "ip", "netns", "exec", ns, "nft", "-f", s.mrk)
			inNS(t, ns, func() error { return s.fw.Attach("tun0") })
			res[k("ebpf")] = append(res[k("ebpf")], inject())
			s.fw.detach()
			sh(t, "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", firewall.Table)
			sh(t, "ip", "netns", "exec", ns, "nft", "-f", s.nft)
			res[k("nft")] = append(res[k("nft")], inject())
			sh(t, "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", firewall.Table)
		}
	}
	var rep strings.Builder
	fmt.Fprintf(&rep, "CPU ns per denied packet through a TUN device on CPU %d (writer + ksoftirqd), median of %d rounds of %d;\n", cpu, rounds, packets)
	fmt.Fprintf(&rep, "cost = mode - floor in the same round; nft/ebpf is the median of the rounds' ratios\n")
	fmt.Fprintf(&rep, "%-7s %7s %7s %7s | %10s %10s %9s\n", "rules", "floor", "ebpf", "nft", "ebpf cost", "nft cost", "nft/ebpf")
	for _, s := range setups {
		g := func(m string) []float64 { return res[fmt.Sprintf("%s/%d", m, s.rules)] }
		fl, eb, nf := g("floor"), g("ebpf"), g("nft")
		var ec, nc, ratio []float64
		for i := range fl {
			ec = append(ec, max(eb[i]-fl[i], 1))
			nc = append(nc, max(nf[i]-fl[i], 1))
			ratio = append(ratio, nc[i]/ec[i])
		}
		fmt.Fprintf(&rep, "%-7d %7.0f %7.0f %7.0f | %10.0f %10.0f %9.1f\n", s.rules, median(fl), median(eb), median(nf), median(ec), median(nc), median(ratio))
	}
	c, _ := setups[0].fw.Counters()
	fmt.Fprintf(&rep, "eBPF firewall (10 rules) counted %d denied of %d sent to it\n", c[VerdictDenied], rounds*packets)
	t.Log("\n" + rep.String())
}

// detach removes the programs from the interface, keeping them and the maps.
func (f *Firewall) detach() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.links {
		l.Close()
	}
	f.links, f.ifc = nil, ""
}

// Namespaces and CPU time: package pkttest.
var (
	sh        = pkttest.Sh
	inNS      = pkttest.InNS
	ksoftirqd = pkttest.Ksoftirqd
	schedNS   = pkttest.TaskCPU
	median    = pkttest.Median
)
