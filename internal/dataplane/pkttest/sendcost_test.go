package pkttest

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/statemesh/statemesh/internal/testenv"
)

// TestFloodSenderCost measures, in one run, what sending a flood costs the
// machine with a UDP socket (sendmmsg, 64 datagrams a call) and with the
// Generator, over the lab's path for a flood: a veth into a bridge, the
// bridge's port to the target, and there an XDP program in generic mode
// that drops everything (as the guard does, in the mode it uses on a
// veth). The sending thread is pinned to one CPU, where the receive path
// runs too, so its CPU time plus that CPU's ksoftirqd is the whole cost.
//
//	STATEMESH_BENCH=1 go test -run TestFloodSenderCost -v ./internal/dataplane/pkttest
func TestFloodSenderCost(t *testing.T) {
	if os.Getenv("STATEMESH_BENCH") == "" {
		t.Skip("set STATEMESH_BENCH=1: a bounded flood between smx- namespaces, about half a minute")
	}
	testenv.RequireRoot(t)
	s, w, d := "smx-fs-s", "smx-fs-w", "smx-fs-d"
	for _, ns := range []string{s, w, d} {
		exec.Command("ip", "netns", "del", ns).Run()
		Sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	Sh(t, "ip", "-n", w, "link", "add", "br0", "type", "bridge")
	Sh(t, "ip", "-n", w, "link", "set", "br0", "up")
	for _, h := range []struct{ ns, addr, port string }{{s, "10.97.0.1/24", "ps"}, {d, "10.97.0.2/24", "pd"}} {
		Sh(t, "ip", "-n", h.ns, "link", "add", "wan0", "type", "veth", "peer", "name", h.port, "netns", w)
		Sh(t, "ip", "-n", h.ns, "addr", "add", h.addr, "dev", "wan0")
		Sh(t, "ip", "-n", h.ns, "link", "set", "wan0", "up")
		Sh(t, "ip", "-n", w, "link", "set", h.port, "master", "br0")
		Sh(t, "ip", "-n", w, "link", "set", h.port, "up")
	}
	dmac := mac(t, d, "wan0")
	Sh(t, "ip", "-n", s, "neigh", "replace", "10.97.0.2", "lladdr", net.HardwareAddr(dmac[:]).String(), "dev", "wan0", "nud", "permanent")
	Sh(t, "ip", "-n", w, "link", "set", "ps", "type", "bridge_slave", "learning", "on")
	Sh(t, "bridge", "-n", w, "fdb", "replace", net.HardwareAddr(dmac[:]).String(), "dev", "pd", "master", "static")
	var napi, drop link.Link
	InNS(t, w, func() (err error) {
		ifc, err := net.InterfaceByName("ps")
		if err == nil {
			napi, err = PassXDP(ifc.Index)
		}
		return err
	})
	defer napi.Close()
	InNS(t, d, func() error {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "Apache-2.0", Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1), asm.Return(), // XDP_DROP
		}})
		if err != nil {
			return err
		}
		defer prog.Close()
		ifc, err := net.InterfaceByName("wan0")
		if err != nil {
			return err
		}
		drop, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: link.XDPGenericMode})
		return err
	})
	defer drop.Close()

	payload := make([]byte, 148)
	payload[0] = 1
	src, dst := netip.MustParseAddrPort("10.97.0.1:40000"), netip.MustParseAddrPort("10.97.0.2:51820")
	frame := Datagram(mac(t, s, "wan0"), dmac, src, dst, payload)
	const packets = 200_000
	cpu := runtime.NumCPU() - 1
	var sock, kern []float64
	for round := range 5 {
		for i := range 2 {
			if (round+i)%2 == 0 {
				sock = append(sock, sendCost(t, s, cpu, packets, func() (func(int) error, error) {
					c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
					if err != nil {
						return nil, err
					}
					t.Cleanup(func() { c.Close() })
					pc := ipv4.NewPacketConn(c)
					msgs := make([]ipv4.Message, 64)
					for i := range msgs {
						msgs[i].Buffers = [][]byte{payload}
					}
					return func(n int) error {
						for sent := 0; sent < n; {
							k, err := pc.WriteBatch(msgs[:min(len(msgs), n-sent)], 0)
							if err != nil {
								return err
							}
							sent += k
						}
						return nil
					}, nil
				}))
			} else {
				kern = append(kern, sendCost(t, s, cpu, packets, func() (func(int) error, error) {
					g, err := NewGenerator(frame)
					if err != nil {
						return nil, err
					}
					t.Cleanup(func() { g.Close() })
					ifc, err := net.InterfaceByName("wan0")
					if err != nil {
						return nil, err
					}
					return func(n int) error {
						for sent := 0; sent < n; sent += 512 {
							if err := g.Send(ifc.Index, min(512, n-sent)); err != nil {
								return err
							}
						}
						return nil
					}, nil
				}))
			}
		}
	}
	var ratios []float64
	for i := range sock {
		ratios = append(ratios, sock[i]/kern[i])
	}
	t.Logf("CPU per flood packet, sent and dropped (sending thread + ksoftirqd on CPU %d, %d packets a measurement): UDP socket %v ns, generator %v ns; socket ÷ generator, per round %v, median %.2f",
		cpu, packets, rounded(sock), rounded(kern), rounded(ratios), Median(ratios))
	if r := Median(ratios); r < 1 {
		t.Errorf("the generator costs more than a socket (%.2f)", r)
	}
	rx := Sh(t, "ip", "-n", d, "-s", "-o", "link", "show", "wan0")
	t.Logf("target: %s", rx)
}

// sendCost sends n packets with the sender open makes, from a thread in ns
// pinned to cpu, and returns the nanoseconds per packet of that thread and
// of cpu's ksoftirqd.
func sendCost(t *testing.T, ns string, cpu, n int, open func() (func(int) error, error)) float64 {
	t.Helper()
	var per float64
	InNS(t, ns, func() error {
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return err
		}
		send, err := open()
		if err != nil {
			return err
		}
		soft := Ksoftirqd(cpu)
		var t0, t1 unix.Timespec
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t0)
		s0 := TaskCPU(soft)
		if err := send(n); err != nil {
			return err
		}
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t1)
		time.Sleep(50 * time.Millisecond)
		per = float64(t1.Nano()-t0.Nano()+TaskCPU(soft)-s0) / float64(n)
		return nil
	})
	return per
}

func rounded(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(int(x*100+0.5)) / 100
	}
	return out
}
