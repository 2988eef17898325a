package ebpffw

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The programs, assembled in Go (no C, no generated object). Ingress, on
// packets arriving through the WireGuard interface:
//
//  1. not IPv4/IPv6, IPv4 with options or fragmented, an IPv6 extension
//     header, ICMP other than echo requests       → pass, unmarked   unjudged
//  2. truncated                                    → drop             malformed
//  3. destination neither the node nor its pods    → pass, unmarked   transit
//  4. TCP/UDP of a flow the node sent out through
//     the interface (the egress program saw it)   → pass, marked     established
//  5. the policy allows it (the source's set bits
//     meet the port's bits or the any-port bits;
//     echo requests on gateways)                   → pass, marked     allowed
//  6. otherwise                                    → drop             denied
//     except TCP segments that are not a bare SYN, and UDP until the
//     flow table has seen UDP's conntrack timeouts go by since the
//     program was attached: connections from before it (an agent
//     restart) are conntrack's to know → pass, unmarked           unjudged
//
// "Unmarked" packets meet nftables' overlay chain unchanged: it decides
// what the program does not (fragments after reassembly, related ICMP,
// extension headers), with its connection tracking. "Marked" packets
// carry the mark bit, which the chain's first rule accepts.
//
// Egress records the reverse tuple of every TCP/UDP packet the node or its
// pods send through the interface in an LRU map, so that its replies are
// "established" (transit a gateway forwards is not recorded).

// Verdict is one counted outcome.
type Verdict uint32

// Verdicts (counter indexes).
const (
	VerdictUnjudged Verdict = iota
	VerdictMalformed
	VerdictTransit
	VerdictEstablished
	VerdictAllowed
	VerdictDenied
	numVerdicts
)

var verdictNames = [numVerdicts]string{"unjudged", "malformed", "transit", "established", "allowed", "denied"}

// String is the verdict's metric label.
func (v Verdict) String() string {
	if v < numVerdicts {
		return verdictNames[v]
	}
	return fmt.Sprintf("verdict%d", uint32(v))
}

// Drop reports whether the verdict drops the packet.
func (v Verdict) Drop() bool { return v == VerdictMalformed || v == VerdictDenied }

// Verdicts lists the verdicts in counter order.
func Verdicts() []Verdict {
	vs := make([]Verdict, numVerdicts)
	for i := range vs {
		vs[i] = Verdict(i)
	}
	return vs
}

const (
	tcOK   = 0
	tcShot = 2

	skbMark    = 8
	skbData    = 76
	skbDataEnd = 80
)

// Stack layout.
const (
	stSrcKey  = -24  // u32 128, 16-byte source (-20..-4)
	stSrcAddr = -20  //
	stDstKey  = -48  // u32 128, 16-byte destination (-44..-28)
	stDstAddr = -44  //
	stPort    = -52  // u32 proto<<16 | port
	stFlow    = -96  // flow key: 16 src, 16 dst, u16 sport, u16 dport, u32 proto (40 bytes, -96..-56)
	stNow     = -104 // u64
	stCounter = -108 // u32
	stZero    = -112 // u32 0
)

// Flow key offsets.
const (
	flowSrc   = 0
	flowDst   = 16
	flowSport = 32
	flowDport = 34
	flowProto = 36
	flowSize  = 40
)

// Config value: u64 any-port bits, u32 flags, u32 mark.
const (
	cfgAnyPort   = 0
	cfgFlags     = 8
	cfgMark      = 12
	cfgValueSize = 16

	flagGatewayEcho = 1
	flagUDPWarm     = 2
)

type maps struct {
	sources  *ebpf.Map // LPM {u32, [16]byte} → u64 set bits
	ports    *ebpf.Map // hash u32 → u64 set bits
	dests    *ebpf.Map // LPM {u32, [16]byte} → u32 1: the node's addresses and pod prefixes
	config   *ebpf.Map // array[1]
	flows    *ebpf.Map // LRU hash flow → u64 last seen
	counters *ebpf.Map // per-CPU array[verdicts] u64
}

func (m *maps) all() []*ebpf.Map {
	return []*ebpf.Map{m.sources, m.ports, m.dests, m.config, m.flows, m.counters}
}

// parse emits the header parsing shared by both programs: R7 = data,
// R8 = data_end, R9 = the L4 header, R6 = protocol; the source and the
// destination (IPv4-mapped) on the stack. l2 is the link header's length
// (0 on WireGuard, 14 on Ethernet). It jumps to unjudged, malformed.
func parse(l2 int32, unjudged, malformed string) asm.Instructions {
	R1, R2, R3, R6, R7, R8, R9, FP := asm.R1, asm.R2, asm.R3, asm.R6, asm.R7, asm.R8, asm.R9, asm.RFP
	bounds := func(reg asm.Register, n int32) asm.Instructions {
		return asm.Instructions{asm.Mov.Reg(R1, reg), asm.Add.Imm(R1, n), asm.JGT.Reg(R1, R8, malformed)}
	}
	var p asm.Instructions
	p = append(p,
		asm.LoadMem(R7, asm.R1, skbData, asm.Word),
		asm.LoadMem(R8, asm.R1, skbDataEnd, asm.Word),
		asm.Mov.Reg(R9, R7),
		asm.Add.Imm(R9, l2),
	)
	p = append(p, bounds(R9, 1)...)
	p = append(p,
		asm.LoadMem(R2, R9, 0, asm.Byte),
		asm.RSh.Imm(R2, 4),
		asm.StoreImm(FP, stSrcKey, 128, asm.Word),
		asm.StoreImm(FP, stDstKey, 128, asm.Word),
		asm.JEq.Imm(R2, 6, "p_ipv6"),
		asm.JNE.Imm(R2, 4, unjudged),
	)
	p = append(p, bounds(R9, 20)...)
	p = append(p,
		asm.LoadMem(R2, R9, 0, asm.Byte),
		asm.JNE.Imm(R2, 0x45, unjudged), // options
		asm.LoadMem(R3, R9, 6, asm.Half),
		asm.JSet.Imm(R3, 0xff3f, unjudged), // fragments
		asm.LoadMem(R6, R9, 9, asm.Byte),
		asm.StoreImm(FP, stSrcAddr, 0, asm.Word),
		asm.StoreImm(FP, stSrcAddr+4, 0, asm.Word),
		asm.StoreImm(FP, stSrcAddr+8, -65536, asm.Word),
		asm.LoadMem(R2, R9, 12, asm.Word),
		asm.StoreMem(FP, stSrcAddr+12, R2, asm.Word),
		asm.StoreImm(FP, stDstAddr, 0, asm.Word),
		asm.StoreImm(FP, stDstAddr+4, 0, asm.Word),
		asm.StoreImm(FP, stDstAddr+8, -65536, asm.Word),
		asm.LoadMem(R2, R9, 16, asm.Word),
		asm.StoreMem(FP, stDstAddr+12, R2, asm.Word),
		asm.Add.Imm(R9, 20),
		asm.Ja.Label("p_done"),
	)
	v6 := bounds(R9, 40)
	v6[0] = v6[0].WithSymbol("p_ipv6")
	p = append(p, v6...)
	p = append(p, asm.LoadMem(R6, R9, 6, asm.Byte))
	for i := int16(0); i < 16; i += 4 {
		p = append(p,
			asm.LoadMem(R2, R9, 8+i, asm.Word),
			asm.StoreMem(FP, stSrcAddr+i, R2, asm.Word),
			asm.LoadMem(R2, R9, 24+i, asm.Word),
			asm.StoreMem(FP, stDstAddr+i, R2, asm.Word),
		)
	}
	p = append(p, asm.Add.Imm(R9, 40))
	p = append(p, asm.Mov.Imm(R2, 0).WithSymbol("p_done"))
	return p
}

// ingress assembles the ingress program.
func ingress(m *maps, l2 int32) asm.Instructions {
	R0, R1, R2, R3, R6, R7, R8, R9, FP := asm.R0, asm.R1, asm.R2, asm.R3, asm.R6, asm.R7, asm.R8, asm.R9, asm.RFP
	v := func(x Verdict) string { return "v_" + x.String() }
	lookup := func(mp *ebpf.Map, keyOff int16) asm.Instructions {
		return asm.Instructions{asm.LoadMapPtr(R1, mp.FD()), asm.Mov.Reg(R2, FP), asm.Add.Imm(R2, int32(keyOff)), asm.FnMapLookupElem.Call()}
	}
	at := func(sym string, is asm.Instructions) asm.Instructions { is[0] = is[0].WithSymbol(sym); return is }
	// The context is needed at the end (the mark): keep it on the stack.
	p := asm.Instructions{asm.StoreMem(FP, -120, asm.R1, asm.DWord), asm.StoreImm(FP, stZero, 0, asm.Word)}
	p = append(p, parse(l2, v(VerdictUnjudged), v(VerdictMalformed))...)
	// To the node or its pods?
	p = append(p, lookup(m.dests, stDstKey)...)
	p = append(p,
		asm.JEq.Imm(R0, 0, v(VerdictTransit)),
		asm.JEq.Imm(R6, 6, "tcp"),
		asm.JEq.Imm(R6, 17, "udp"),
		asm.JEq.Imm(R6, 1, "icmp4"),
		asm.JEq.Imm(R6, 58, "icmp6"),
		// IPv6 extension headers: nftables decides.
		asm.JEq.Imm(R6, 0, v(VerdictUnjudged)),
		asm.JEq.Imm(R6, 43, v(VerdictUnjudged)),
		asm.JEq.Imm(R6, 44, v(VerdictUnjudged)),
		asm.JEq.Imm(R6, 60, v(VerdictUnjudged)),
		// Another protocol: only rules without ports admit it.
		asm.Mov.Imm(R7, 0),
		asm.StoreImm(FP, stPort, 0, asm.Word),
		asm.Ja.Label("policy"),
	)
	// ICMP: echo requests are the policy's; the rest is nftables' (path
	// MTU, errors related to a connection, echo replies).
	icmp := func(sym string, echo int32) asm.Instructions {
		is := asm.Instructions{
			asm.Mov.Reg(R1, R9), asm.Add.Imm(R1, 4), asm.JGT.Reg(R1, R8, v(VerdictMalformed)),
			asm.LoadMem(R7, R9, 0, asm.Byte),
			asm.JNE.Imm(R7, echo, v(VerdictUnjudged)),
			asm.Ja.Label("ports"),
		}
		return at(sym, is)
	}
	p = append(p, icmp("icmp4", 8)...)
	p = append(p, icmp("icmp6", 128)...)
	// TCP, UDP: the flow first.
	for _, x := range []struct {
		sym string
		n   int32
	}{{"tcp", 20}, {"udp", 8}} {
		p = append(p, at(x.sym, asm.Instructions{asm.Mov.Reg(R1, R9), asm.Add.Imm(R1, x.n), asm.JGT.Reg(R1, R8, v(VerdictMalformed)), asm.Ja.Label("l4")})...)
	}
	p = append(p, asm.LoadMem(R2, R9, 0, asm.Half).WithSymbol("l4"))
	p = append(p, asm.StoreMem(FP, stFlow+flowSport, R2, asm.Half))
	p = append(p, asm.LoadMem(R7, R9, 2, asm.Half), asm.StoreMem(FP, stFlow+flowDport, R7, asm.Half))
	p = append(p, asm.StoreMem(FP, stFlow+flowProto, R6, asm.Word))
	for i := int16(0); i < 16; i += 4 {
		p = append(p,
			asm.LoadMem(R2, FP, stSrcAddr+i, asm.Word), asm.StoreMem(FP, stFlow+flowSrc+i, R2, asm.Word),
			asm.LoadMem(R2, FP, stDstAddr+i, asm.Word), asm.StoreMem(FP, stFlow+flowDst+i, R2, asm.Word),
		)
	}
	p = append(p, lookup(m.flows, stFlow)...)
	p = append(p, asm.JNE.Imm(R0, 0, v(VerdictEstablished)), asm.HostTo(asm.BE, R7, asm.Half))
	// R7 = port (or ICMP type; 0 for other protocols): the port's bits.
	p = append(p,
		asm.Mov.Reg(R2, R6).WithSymbol("ports"),
		asm.LSh.Imm(R2, 16),
		asm.Or.Reg(R2, R7),
		asm.StoreMem(FP, stPort, R2, asm.Word),
	)
	p = append(p, lookup(m.ports, stPort)...)
	p = append(p,
		asm.Mov.Imm(R7, 0),
		asm.JEq.Imm(R0, 0, "policy"),
		asm.LoadMem(R7, R0, 0, asm.DWord),
	)
	// R7 = the port's bits; add the any-port bits, and gateways' echo.
	p = append(p, at("policy", lookup(m.config, stZero))...)
	p = append(p,
		asm.JEq.Imm(R0, 0, v(VerdictDenied)),
		asm.LoadMem(R2, R0, cfgAnyPort, asm.DWord),
		asm.Or.Reg(R7, R2),
		asm.LoadMem(R2, R0, cfgFlags, asm.Word),
		asm.JSet.Imm(R2, flagGatewayEcho, "gw_echo"),
		asm.Ja.Label("sources"),
		asm.LoadMem(R2, FP, stPort, asm.Word).WithSymbol("gw_echo"),
		asm.JEq.Imm(R2, 1<<16|8, v(VerdictAllowed)),
		asm.JEq.Imm(R2, 58<<16|128, v(VerdictAllowed)),
	)
	p = append(p, at("sources", lookup(m.sources, stSrcKey))...)
	p = append(p,
		asm.JEq.Imm(R0, 0, "deny"),
		asm.LoadMem(R2, R0, 0, asm.DWord),
		asm.And.Reg(R2, R7),
		asm.JNE.Imm(R2, 0, v(VerdictAllowed)),
		// The policy denies it. A TCP segment that is not a bare SYN may
		// belong to a connection opened before the program saw the
		// node's flows (an agent restart): conntrack knows, so nftables
		// decides. So does UDP until the flow table is warm (the agent
		// sets the flag once UDP's conntrack timeouts have passed).
		asm.JEq.Imm(R6, 6, "deny_tcp").WithSymbol("deny"),
		asm.JNE.Imm(R6, 17, v(VerdictDenied)),
	)
	p = append(p, lookup(m.config, stZero)...)
	p = append(p,
		asm.JEq.Imm(R0, 0, v(VerdictUnjudged)),
		asm.LoadMem(R2, R0, cfgFlags, asm.Word),
		asm.JSet.Imm(R2, flagUDPWarm, v(VerdictDenied)),
		asm.Ja.Label(v(VerdictUnjudged)),
		asm.Mov.Reg(R1, R9).WithSymbol("deny_tcp"),
		asm.Add.Imm(R1, 20),
		asm.JGT.Reg(R1, R8, v(VerdictDenied)),
		asm.LoadMem(R2, R9, 13, asm.Byte),
		asm.And.Imm(R2, 0x12),
		asm.JEq.Imm(R2, 0x02, v(VerdictDenied)),
		asm.Ja.Label(v(VerdictUnjudged)),
	)
	// Verdicts: R6 = action, R9 = 1 to mark.
	for _, x := range Verdicts() {
		act, mark := int32(tcOK), int32(0)
		if x.Drop() {
			act = tcShot
		}
		if x == VerdictAllowed || x == VerdictEstablished {
			mark = 1
		}
		p = append(p,
			asm.StoreImm(FP, stCounter, int64(x), asm.Word).WithSymbol(v(x)),
			asm.Mov.Imm(R6, act),
			asm.Mov.Imm(R9, mark),
			asm.Ja.Label("count"),
		)
	}
	p = append(p, at("count", lookup(m.counters, stCounter))...)
	p = append(p,
		asm.JEq.Imm(R0, 0, "mark"),
		asm.LoadMem(R2, R0, 0, asm.DWord),
		asm.Add.Imm(R2, 1),
		asm.StoreMem(R0, 0, R2, asm.DWord),
		asm.JEq.Imm(R9, 0, "exit").WithSymbol("mark"),
	)
	p = append(p, lookup(m.config, stZero)...)
	p = append(p,
		asm.JEq.Imm(R0, 0, "exit"),
		asm.LoadMem(R3, R0, cfgMark, asm.Word),
		asm.LoadMem(R1, FP, -120, asm.DWord),
		asm.LoadMem(R2, R1, skbMark, asm.Word),
		asm.Or.Reg(R2, R3),
		asm.StoreMem(R1, skbMark, R2, asm.Word),
		asm.Mov.Reg(R0, R6).WithSymbol("exit"),
		asm.Return(),
	)
	return p
}

// egress assembles the egress program: it records the reverse tuple of
// TCP and UDP packets leaving through the interface, and passes all.
func egress(m *maps, l2 int32) asm.Instructions {
	R0, R1, R2, R3, R4, R6, R8, R9, FP := asm.R0, asm.R1, asm.R2, asm.R3, asm.R4, asm.R6, asm.R8, asm.R9, asm.RFP
	p := parse(l2, "out", "out")
	p = append(p,
		asm.JEq.Imm(R6, 6, "e_l4"),
		asm.JNE.Imm(R6, 17, "out"),
		// Only the node's and its pods' flows: transit through a gateway
		// is not recorded (the destination enforces).
		asm.LoadMapPtr(R1, m.dests.FD()).WithSymbol("e_l4"),
		asm.Mov.Reg(R2, FP),
		asm.Add.Imm(R2, stSrcKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(R0, 0, "out"),
		asm.Mov.Reg(R1, R9),
		asm.Add.Imm(R1, 4),
		asm.JGT.Reg(R1, R8, "out"),
		// Reverse: the reply's source is this packet's destination.
		asm.LoadMem(R2, R9, 0, asm.Half),
		asm.StoreMem(FP, stFlow+flowDport, R2, asm.Half),
		asm.LoadMem(R2, R9, 2, asm.Half),
		asm.StoreMem(FP, stFlow+flowSport, R2, asm.Half),
		asm.StoreMem(FP, stFlow+flowProto, R6, asm.Word),
	)
	for i := int16(0); i < 16; i += 4 {
		p = append(p,
			asm.LoadMem(R2, FP, stDstAddr+i, asm.Word), asm.StoreMem(FP, stFlow+flowSrc+i, R2, asm.Word),
			asm.LoadMem(R2, FP, stSrcAddr+i, asm.Word), asm.StoreMem(FP, stFlow+flowDst+i, R2, asm.Word),
		)
	}
	p = append(p,
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(FP, stNow, R0, asm.DWord),
		asm.LoadMapPtr(R1, m.flows.FD()),
		asm.Mov.Reg(R2, FP),
		asm.Add.Imm(R2, stFlow),
		asm.Mov.Reg(R3, FP),
		asm.Add.Imm(R3, stNow),
		asm.Mov.Imm(R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(R0, tcOK).WithSymbol("out"),
		asm.Return(),
	)
	return p
}
