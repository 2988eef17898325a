package pkttest

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// A Generator sends copies of one Ethernet frame out of an interface from
// inside the kernel: an XDP program that answers XDP_TX, run by
// BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES, Linux
// 5.18), the way xdp-trafficgen does. No socket, no socket buffer on the
// sending side, one system call per batch: a flood made this way costs the
// machine a fraction of what a UDP socket's costs, which matters when the
// attacker and the system under test share the same cores. On a veth the
// frames reach the peer only while the peer runs NAPI (an XDP program
// attached to it in native mode, or GRO enabled).
type Generator struct {
	prog  *ebpf.Program
	frame []byte
}

// NewGenerator loads the program for frame (a whole Ethernet frame).
func NewGenerator(frame []byte) (*Generator, error) {
	if len(frame) < 14 {
		return nil, errors.New("pkttest: a frame needs at least an Ethernet header")
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "Apache-2.0", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 3), // XDP_TX
		asm.Return(),
	}})
	if err != nil {
		return nil, fmt.Errorf("pkttest: loading the generator: %w", err)
	}
	return &Generator{prog: prog, frame: frame}, nil
}

// xdpMD is the kernel's struct xdp_md, the context BPF_PROG_RUN takes.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Send transmits n copies out of the interface ifindex, which the calling
// thread's network namespace must hold (lock the thread in it).
func (g *Generator) Send(ifindex, n int) error {
	if n <= 0 {
		return nil
	}
	ctx := xdpMD{DataEnd: uint32(len(g.frame)), IngressIfindex: uint32(ifindex)}
	_, err := g.prog.Run(&ebpf.RunOptions{
		Data:    g.frame,
		Context: ctx,
		Repeat:  uint32(n),
		Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
	})
	if err != nil {
		return fmt.Errorf("pkttest: sending %d frames out of interface %d: %w", n, ifindex, err)
	}
	return nil
}

// PassXDP attaches an XDP program that passes everything to the interface
// ifindex of the calling thread's namespace in native mode: on a veth that
// makes the driver run NAPI, which it needs to take frames a Generator
// sends from the other end. Close the link to detach it.
func PassXDP(ifindex int) (link.Link, error) {
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "Apache-2.0", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 2), // XDP_PASS
		asm.Return(),
	}})
	if err != nil {
		return nil, fmt.Errorf("pkttest: loading XDP_PASS: %w", err)
	}
	defer pass.Close() // the link holds its own reference
	l, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		return nil, fmt.Errorf("pkttest: attaching XDP_PASS to interface %d: %w", ifindex, err)
	}
	return l, nil
}

// Close unloads the program.
func (g *Generator) Close() error { return g.prog.Close() }
