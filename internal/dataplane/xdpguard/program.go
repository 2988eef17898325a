package xdpguard

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/statemesh/statemesh/internal/dataplane/guardplan"
)

// The program is assembled here, in Go, instruction by instruction: no C
// compiler, no generated object, the same bytes on every build. Its logic,
// in order (each exit counts one verdict):
//
//  1. not IPv4/IPv6 (ARP, VLAN tags, LLDP...)               → pass  not_ip
//  2. truncated headers                                      → drop  malformed
//  3. IPv4 with options, or an IP protocol the node does
//     not serve (not TCP, UDP, ICMP)                          → drop  protocol
//  4. destination not one of the node's addresses (transit,
//     broadcast, multicast: the forward path's business)     → pass  not_local
//  5. IPv4 fragment / IPv6 fragment header                   → pass  fragment
//     IPv6 hop-by-hop, routing, destination options headers  → pass  ipv6_ext
//  6. ICMP, ICMPv6 (neighbour discovery, path MTU)           → pass  icmp
//  7. port not in the ports map: TCP without a bare SYN
//     (segments of the node's own connections), UDP to the
//     ephemeral range (replies to its requests)              → pass  reply
//     anything else                                          → drop  closed
//  8. open port                                              → pass  service
//  9. restricted port: the source has one of its classes     → pass  service
//     otherwise                                              → drop  source
// 10. WireGuard port: known source                           → pass  wg_known
//     unknown source, initiation within the per-source and
//     the total limit of the window                          → pass  wg_handshake
//     unknown source, transport data within the same limits
//     (a roaming peer's first packets from its new address)  → pass  wg_roam
//     over either limit                                      → drop  wg_ratelimited
//     unknown source, any other message                      → drop  wg_unknown
//
// Everything that passes meets the node's nftables table next.

// Verdict is one counted outcome of the program.
type Verdict uint32

// Verdicts, the indexes of the counters map.
const (
	VerdictNotIP Verdict = iota
	VerdictMalformed
	VerdictProtocol
	VerdictNotLocal
	VerdictFragment
	VerdictIPv6Ext
	VerdictICMP
	VerdictReply
	VerdictClosed
	VerdictService
	VerdictSource
	VerdictWGKnown
	VerdictWGUnknown
	VerdictWGHandshake
	VerdictWGRateLimited
	VerdictWGRoam
	numVerdicts
)

var verdictNames = [numVerdicts]string{"not_ip", "malformed", "protocol", "not_local", "fragment", "ipv6_ext", "icmp",
	"reply", "closed", "service", "source", "wg_known", "wg_unknown", "wg_handshake", "wg_ratelimited", "wg_roam"}

var verdictDrops = [numVerdicts]bool{VerdictMalformed: true, VerdictProtocol: true, VerdictClosed: true, VerdictSource: true,
	VerdictWGUnknown: true, VerdictWGRateLimited: true}

// String is the verdict's metric label.
func (v Verdict) String() string {
	if v < numVerdicts {
		return verdictNames[v]
	}
	return fmt.Sprintf("verdict%d", uint32(v))
}

// Drop reports whether the verdict drops the packet.
func (v Verdict) Drop() bool { return v < numVerdicts && verdictDrops[v] }

// Verdicts lists every verdict in counter order.
func Verdicts() []Verdict {
	vs := make([]Verdict, numVerdicts)
	for i := range vs {
		vs[i] = Verdict(i)
	}
	return vs
}

// XDP return codes.
const (
	xdpDrop = 1
	xdpPass = 2
)

// Stack layout (offsets from the frame pointer R10).
const (
	stSrcKey    = -24 // LPM key: u32 prefix length, 16-byte source address (-20..-4)
	stSrcAddr   = -20 // the source address alone: the per-source rate key
	stCounter   = -28 // u32 counter index
	stLocal     = -48 // 16-byte destination address
	stPort      = -52 // u32 port key
	stZero      = -56 // u32 0: key of the one-entry arrays
	stNewRate   = -72 // rate entry being created: u64 count, u64 window start
	stWindow    = -80 // u64 window length (ns)
	stLimitSrc  = -84 // u32 per-source limit
	stLimitAll  = -88 // u32 total limit
	stEphemeral = -92 // u16 first, u16 last ephemeral port
)

// Offsets in the config value (guardplan.Config, packed little endian).
const (
	cfgWindow    = 0
	cfgLimitSrc  = 8
	cfgLimitAll  = 12
	cfgEphFrom   = 16
	cfgEphTo     = 18
	cfgValueSize = 24
)

// Network-order constants as a little-endian load sees them.
const (
	ethIPv4   = 0x0008 // 0x0800
	ethIPv6   = 0xdd86 // 0x86dd
	ipv4Frag  = 0xff3f // flags MF | fragment offset: 0x3fff
	wgInitLen = 0x9c00 // UDP length 156 = 8 + 148
)

// program assembles the guard, its maps given by file descriptor.
func program(m *maps) asm.Instructions {
	R0, R1, R2, R3, R6, R7, R8, R9, FP := asm.R0, asm.R1, asm.R2, asm.R3, asm.R6, asm.R7, asm.R8, asm.R9, asm.RFP
	verdict := func(v Verdict) string { return "v_" + v.String() }
	lookup := func(mp *ebpf.Map, keyOff int16) asm.Instructions {
		return asm.Instructions{
			asm.LoadMapPtr(R1, mp.FD()),
			asm.Mov.Reg(R2, FP),
			asm.Add.Imm(R2, int32(keyOff)),
			asm.FnMapLookupElem.Call(),
		}
	}
	// bounds jumps to malformed unless reg+n <= data_end (R8).
	bounds := func(reg asm.Register, n int32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(R1, reg),
			asm.Add.Imm(R1, n),
			asm.JGT.Reg(R1, R8, verdict(VerdictMalformed)),
		}
	}
	var p asm.Instructions
	emit := func(is ...asm.Instruction) { p = append(p, is...) }
	emits := func(is asm.Instructions) { p = append(p, is...) }

	// R7 = data, R8 = data_end.
	emit(
		asm.LoadMem(R7, R1, 0, asm.Word),
		asm.LoadMem(R8, R1, 4, asm.Word),
		asm.StoreImm(FP, stZero, 0, asm.Word),
	)
	emits(bounds(R7, 14))
	emit(
		asm.LoadMem(R2, R7, 12, asm.Half),
		asm.Mov.Reg(R9, R7),
		asm.Add.Imm(R9, 14), // R9: the IP header
		asm.JEq.Imm(R2, ethIPv4, "ipv4"),
		asm.JEq.Imm(R2, ethIPv6, "ipv6"),
		asm.Ja.Label(verdict(VerdictNotIP)),
	)

	// IPv4: R6 = protocol, source and destination IPv4-mapped on the stack.
	emits(at("ipv4", bounds(R9, 20)))
	emit(
		asm.LoadMem(R2, R9, 0, asm.Byte),
		asm.JNE.Imm(R2, 0x45, verdict(VerdictProtocol)), // version 4, no options
		asm.LoadMem(R6, R9, 9, asm.Byte),
		asm.StoreImm(FP, stSrcKey, 128, asm.Word),
		asm.StoreImm(FP, stSrcAddr, 0, asm.Word),
		asm.StoreImm(FP, stSrcAddr+4, 0, asm.Word),
		asm.StoreImm(FP, stSrcAddr+8, -65536, asm.Word), // bytes 00 00 ff ff
		asm.LoadMem(R2, R9, 12, asm.Word),
		asm.StoreMem(FP, stSrcAddr+12, R2, asm.Word),
		asm.StoreImm(FP, stLocal, 0, asm.Word),
		asm.StoreImm(FP, stLocal+4, 0, asm.Word),
		asm.StoreImm(FP, stLocal+8, -65536, asm.Word),
		asm.LoadMem(R2, R9, 16, asm.Word),
		asm.StoreMem(FP, stLocal+12, R2, asm.Word),
		asm.LoadMem(R3, R9, 6, asm.Half),
		asm.Add.Imm(R9, 20), // R9: the L4 header
		asm.JSet.Imm(R3, ipv4Frag, "local_frag"),
		asm.Ja.Label("local"),
	)

	// IPv6.
	emits(at("ipv6", bounds(R9, 40)))
	emit(asm.LoadMem(R6, R9, 6, asm.Byte), asm.StoreImm(FP, stSrcKey, 128, asm.Word))
	for i := int16(0); i < 16; i += 4 {
		emit(
			asm.LoadMem(R2, R9, 8+i, asm.Word),
			asm.StoreMem(FP, stSrcAddr+i, R2, asm.Word),
			asm.LoadMem(R2, R9, 24+i, asm.Word),
			asm.StoreMem(FP, stLocal+i, R2, asm.Word),
		)
	}
	emit(asm.Add.Imm(R9, 40), asm.Ja.Label("local"))

	// Fragments: to the node? then pass (the stack reassembles; nftables
	// judges the whole packet).
	emits(at("local_frag", lookup(m.local, stLocal)))
	emit(
		asm.JEq.Imm(R0, 0, verdict(VerdictNotLocal)),
		asm.Ja.Label(verdict(VerdictFragment)),
	)

	// To the node?
	emits(at("local", lookup(m.local, stLocal)))
	emit(
		asm.JEq.Imm(R0, 0, verdict(VerdictNotLocal)),
		asm.JEq.Imm(R6, 6, "tcp"),
		asm.JEq.Imm(R6, 17, "udp"),
		asm.JEq.Imm(R6, 1, verdict(VerdictICMP)),
		asm.JEq.Imm(R6, 58, verdict(VerdictICMP)),
		asm.JEq.Imm(R6, 44, verdict(VerdictFragment)),
		asm.JEq.Imm(R6, 0, verdict(VerdictIPv6Ext)),
		asm.JEq.Imm(R6, 43, verdict(VerdictIPv6Ext)),
		asm.JEq.Imm(R6, 60, verdict(VerdictIPv6Ext)),
		asm.Ja.Label(verdict(VerdictProtocol)),
	)
	// TCP and UDP: R7 = destination port (host order), port key on the stack.
	emits(at("tcp", bounds(R9, 20)))
	emit(asm.Ja.Label("l4"))
	emits(at("udp", bounds(R9, 8)))
	emit(
		asm.LoadMem(R7, R9, 2, asm.Half).WithSymbol("l4"),
		asm.HostTo(asm.BE, R7, asm.Half),
		asm.Mov.Reg(R2, R6),
		asm.LSh.Imm(R2, 16),
		asm.Or.Reg(R2, R7),
		asm.StoreMem(FP, stPort, R2, asm.Word),
	)
	emits(lookup(m.ports, stPort))
	emit(
		asm.JNE.Imm(R0, 0, "served"),
		// Not served: replies to the node's own traffic go on to conntrack.
		asm.JEq.Imm(R6, 17, "udp_closed"),
		asm.LoadMem(R2, R9, 13, asm.Byte), // TCP flags
		asm.And.Imm(R2, 0x12),             // SYN | ACK
		asm.JEq.Imm(R2, 0x02, verdict(VerdictClosed)),
		asm.Ja.Label(verdict(VerdictReply)),
	)
	emits(at("udp_closed", lookup(m.config, stZero)))
	emit(
		asm.JEq.Imm(R0, 0, verdict(VerdictClosed)),
		asm.LoadMem(R2, R0, cfgEphFrom, asm.Half),
		asm.JGT.Reg(R2, R7, verdict(VerdictClosed)),
		asm.LoadMem(R2, R0, cfgEphTo, asm.Half),
		asm.JGT.Reg(R7, R2, verdict(VerdictClosed)),
		asm.Ja.Label(verdict(VerdictReply)),
	)
	// Served: R7 = the port's value.
	emit(
		asm.LoadMem(R7, R0, 0, asm.Word).WithSymbol("served"),
		asm.Mov.Reg(R2, R7),
		asm.And.Imm(R2, 0xff),
		asm.JEq.Imm(R2, int32(guardplan.KindOpen), verdict(VerdictService)),
	)
	emits(lookup(m.sources, stSrcKey))
	emit(
		asm.Mov.Imm(R3, 0),
		asm.JEq.Imm(R0, 0, "classes"),
		asm.LoadMem(R3, R0, 0, asm.Word),
		asm.Mov.Reg(R2, R7).WithSymbol("classes"),
		asm.RSh.Imm(R2, 8),
		asm.And.Reg(R2, R3),
		asm.Mov.Reg(R3, R7),
		asm.And.Imm(R3, 0xff),
		asm.JNE.Imm(R3, int32(guardplan.KindWireGuard), "restricted"),
		asm.JNE.Imm(R2, 0, verdict(VerdictWGKnown)),
		asm.Ja.Label("wg_unknown"),
		asm.JNE.Imm(R2, 0, verdict(VerdictService)).WithSymbol("restricted"),
		asm.Ja.Label(verdict(VerdictSource)),
	)
	// WireGuard from an unknown source: handshake initiations (type 1,
	// three reserved zero bytes, 148 bytes) and transport data (type 4,
	// at least a 16-byte header and a 16-byte tag: a roaming peer's data,
	// which WireGuard authenticates and then moves the peer's endpoint
	// for), each under the per-source and the total limit.
	emits(at("wg_unknown", bounds(R9, 8+4)))
	emit(
		asm.JEq.Imm(R6, 17, "wg_udp"),
		asm.Ja.Label(verdict(VerdictWGUnknown)),
		asm.LoadMem(R2, R9, 8, asm.Word).WithSymbol("wg_udp"),
		asm.LoadMem(R3, R9, 4, asm.Half),
		asm.JEq.Imm(R2, 4, "wg_data"),
		asm.JNE.Imm(R2, 1, verdict(VerdictWGUnknown)),
		asm.JNE.Imm(R3, wgInitLen, verdict(VerdictWGUnknown)),
		asm.StoreImm(FP, stCounter, int64(VerdictWGHandshake), asm.Word), // the verdict within the limits
		asm.Ja.Label("wg_limits"),
		asm.HostTo(asm.BE, R3, asm.Half).WithSymbol("wg_data"),
		asm.JLT.Imm(R3, 8+32, verdict(VerdictWGUnknown)),
		asm.StoreImm(FP, stCounter, int64(VerdictWGRoam), asm.Word),
	)
	emits(at("wg_limits", lookup(m.config, stZero)))
	emit(
		asm.JEq.Imm(R0, 0, verdict(VerdictWGRateLimited)),
		asm.LoadMem(R2, R0, cfgWindow, asm.DWord),
		asm.StoreMem(FP, stWindow, R2, asm.DWord),
		asm.LoadMem(R2, R0, cfgLimitSrc, asm.Word),
		asm.StoreMem(FP, stLimitSrc, R2, asm.Word),
		asm.LoadMem(R2, R0, cfgLimitAll, asm.Word),
		asm.StoreMem(FP, stLimitAll, R2, asm.Word),
	)
	emits(rateLimit("src", m.rate, stSrcAddr, stLimitSrc, verdict(VerdictWGRateLimited), "total"))
	emits(at("total", rateLimit("all", m.total, stZero, stLimitAll, verdict(VerdictWGRateLimited), "wg_within")))
	emit(
		asm.LoadMem(R2, FP, stCounter, asm.Word).WithSymbol("wg_within"),
		asm.JEq.Imm(R2, int32(VerdictWGRoam), verdict(VerdictWGRoam)),
		asm.Ja.Label(verdict(VerdictWGHandshake)),
	)

	// Verdicts: count (per CPU), then pass or drop.
	for _, v := range Verdicts() {
		act := int32(xdpPass)
		if v.Drop() {
			act = xdpDrop
		}
		emit(
			asm.StoreImm(FP, stCounter, int64(v), asm.Word).WithSymbol(verdict(v)),
			asm.Mov.Imm(R6, act),
			asm.Ja.Label("count"),
		)
	}
	emits(at("count", lookup(m.counters, stCounter)))
	emit(
		asm.JEq.Imm(R0, 0, "exit"),
		asm.LoadMem(R2, R0, 0, asm.DWord),
		asm.Add.Imm(R2, 1),
		asm.StoreMem(R0, 0, R2, asm.DWord),
		asm.Mov.Reg(R0, R6).WithSymbol("exit"),
		asm.Return(),
	)
	return p
}

// at labels the first instruction of is.
func at(sym string, is asm.Instructions) asm.Instructions {
	is[0] = is[0].WithSymbol(sym)
	return is
}

// rateLimit is a fixed-window counter in map mp under the key at keyOff,
// its limit the u32 at limitOff and the window the u64 at stWindow: a
// packet within the limit jumps to ok, one over it to over. A missing
// entry (LRU map) is created with a count of 1. Concurrent CPUs may let a
// few packets more through at a window's edge; the count itself is atomic.
func rateLimit(name string, mp *ebpf.Map, keyOff, limitOff int16, over, ok string) asm.Instructions {
	R0, R1, R2, R3, R4, R7, FP := asm.R0, asm.R1, asm.R2, asm.R3, asm.R4, asm.R7, asm.RFP
	l := func(s string) string { return name + "_" + s }
	return asm.Instructions{
		asm.LoadMapPtr(R1, mp.FD()),
		asm.Mov.Reg(R2, FP),
		asm.Add.Imm(R2, int32(keyOff)),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(R0, 0, l("new")),
		asm.Mov.Reg(R7, R0),
		asm.FnKtimeGetNs.Call(),
		asm.LoadMem(R1, R7, 8, asm.DWord),
		asm.Mov.Reg(R2, R0),
		asm.Sub.Reg(R2, R1),
		asm.LoadMem(R3, FP, stWindow, asm.DWord),
		asm.JGT.Reg(R2, R3, l("reset")),
		asm.LoadMem(R1, R7, 0, asm.DWord),
		asm.LoadMem(R3, FP, limitOff, asm.Word),
		asm.JGE.Reg(R1, R3, over),
		asm.Mov.Imm(R1, 1),
		asm.StoreXAdd(R7, R1, asm.DWord),
		asm.Ja.Label(ok),
		// A new window.
		asm.LoadMem(R3, FP, limitOff, asm.Word).WithSymbol(l("reset")),
		asm.JEq.Imm(R3, 0, over),
		asm.StoreMem(R7, 8, R0, asm.DWord),
		asm.Mov.Imm(R1, 1),
		asm.StoreMem(R7, 0, R1, asm.DWord),
		asm.Ja.Label(ok),
		// A source not seen (or evicted).
		asm.LoadMem(R3, FP, limitOff, asm.Word).WithSymbol(l("new")),
		asm.JEq.Imm(R3, 0, over),
		asm.FnKtimeGetNs.Call(),
		asm.Mov.Imm(R1, 1),
		asm.StoreMem(FP, stNewRate, R1, asm.DWord),
		asm.StoreMem(FP, stNewRate+8, R0, asm.DWord),
		asm.LoadMapPtr(R1, mp.FD()),
		asm.Mov.Reg(R2, FP),
		asm.Add.Imm(R2, int32(keyOff)),
		asm.Mov.Reg(R3, FP),
		asm.Add.Imm(R3, stNewRate),
		asm.Mov.Imm(R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.Ja.Label(ok),
	}
}
