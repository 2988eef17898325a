// Package xdpguard owns the underlay guard: an XDP program on a node's or a
// gateway's underlay interface that drops, before the network stack and
// WireGuard see them, the packets that are not the mesh's (see program.go
// for the verdicts). Its maps are written in place from guardplan deltas;
// the program is never reloaded for a change of peers, ports or limits.
//
// The program is assembled in Go (cilium/ebpf's asm package): there is no
// object file to regenerate and nothing but this source to review.
package xdpguard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"

	"github.com/statemesh/statemesh/internal/dataplane/guardplan"
)

// ErrUnavailable wraps every reason the kernel cannot run the guard (no
// BPF, no XDP, a verifier that refuses the program, no permission).
var ErrUnavailable = errors.New("the XDP guard cannot run on this kernel")

// Options size the maps and choose the attach mode.
type Options struct {
	// MaxSources bounds the source trie (peers' endpoints, ranges, learned
	// endpoints); default 65536.
	MaxSources uint32
	// MaxTracked bounds the per-source handshake rate entries (an LRU:
	// the least recently seen unknown sources are forgotten first);
	// default 65536.
	MaxTracked uint32
	// Mode is "" (native where the driver has it, else generic), "native"
	// or "generic".
	Mode string
	// PinDir, when set, is a directory on a bpf filesystem where the maps
	// are pinned while the guard runs, so that `statemesh guard` and
	// bpftool can read them (DefaultPinDir for the agent). Pins left by
	// an earlier run are replaced.
	PinDir string
	Log    *slog.Logger
}

// DefaultPinDir is where the agent pins the guard's maps.
const DefaultPinDir = "/sys/fs/bpf/statemesh"

// Map names: the pinned files' names and what bpftool shows.
const (
	MapSources  = "smx_sources"
	MapPorts    = "smx_ports"
	MapLocal    = "smx_local"
	MapConfig   = "smx_config"
	MapRate     = "smx_hs_rate"
	MapTotal    = "smx_hs_total"
	MapCounters = "smx_verdicts"
)

// maps are the guard's maps.
type maps struct {
	sources  *ebpf.Map // LPM trie: {u32 prefixlen, [16]byte} → u32 classes
	ports    *ebpf.Map // hash: u32 proto<<16|port → u32 kind | classes<<8
	local    *ebpf.Map // hash: [16]byte → u32 1
	config   *ebpf.Map // array[1]: guardplan.Config
	rate     *ebpf.Map // LRU hash: [16]byte source → {u64 count, u64 window start}
	total    *ebpf.Map // array[1]: {u64 count, u64 window start}
	counters *ebpf.Map // per-CPU array[verdicts]: u64 packets
}

func (m *maps) all() []*ebpf.Map {
	return []*ebpf.Map{m.sources, m.ports, m.local, m.config, m.rate, m.total, m.counters}
}

func (m *maps) close() {
	for _, x := range m.all() {
		if x != nil {
			x.Close()
		}
	}
}

// Inspect reads the maps a running guard pinned under dir (a separate
// process: `statemesh guard`).
func Inspect(dir string) (Contents, error) {
	var m maps
	defer m.close()
	for _, x := range []struct {
		dst  **ebpf.Map
		name string
	}{{&m.sources, MapSources}, {&m.ports, MapPorts}, {&m.local, MapLocal}, {&m.config, MapConfig}, {&m.rate, MapRate}, {&m.total, MapTotal}, {&m.counters, MapCounters}} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, x.name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return Contents{}, fmt.Errorf("no guard maps pinned in %s (is the agent running with --dataplane ebpf or auto?): %w", dir, err)
		}
		*x.dst = mp
	}
	return m.dump()
}

// Guard is a loaded guard program and its maps, attached to any number of
// interfaces (a gateway's underlay and WAN interfaces share one program
// and one set of maps).
type Guard struct {
	mu   sync.Mutex
	m    maps
	prog *ebpf.Program
	lnks []link.Link
	ifcs []string
	cur  guardplan.Entries
	log  *slog.Logger
	// pinned is the directory the maps are pinned in ("" if not).
	pinned string
}

// Load creates the maps and loads the program (not attached yet).
func Load(o Options) (*Guard, error) {
	if o.MaxSources == 0 {
		o.MaxSources = 65536
	}
	if o.MaxTracked == 0 {
		o.MaxTracked = 65536
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	g := &Guard{log: o.Log}
	specs := []struct {
		dst  **ebpf.Map
		spec ebpf.MapSpec
	}{
		{&g.m.sources, ebpf.MapSpec{Name: MapSources, Type: ebpf.LPMTrie, KeySize: 20, ValueSize: 4, MaxEntries: o.MaxSources, Flags: 1 /* BPF_F_NO_PREALLOC */}},
		{&g.m.ports, ebpf.MapSpec{Name: MapPorts, Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: guardplan.MaxPorts}},
		{&g.m.local, ebpf.MapSpec{Name: MapLocal, Type: ebpf.Hash, KeySize: 16, ValueSize: 4, MaxEntries: 1024}},
		{&g.m.config, ebpf.MapSpec{Name: MapConfig, Type: ebpf.Array, KeySize: 4, ValueSize: cfgValueSize, MaxEntries: 1}},
		{&g.m.rate, ebpf.MapSpec{Name: MapRate, Type: ebpf.LRUHash, KeySize: 16, ValueSize: 16, MaxEntries: o.MaxTracked}},
		{&g.m.total, ebpf.MapSpec{Name: MapTotal, Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1}},
		{&g.m.counters, ebpf.MapSpec{Name: MapCounters, Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(numVerdicts)}},
	}
	for _, s := range specs {
		mp, err := ebpf.NewMap(&s.spec)
		if err != nil {
			g.m.close()
			return nil, fmt.Errorf("%w: creating map %s: %v", ErrUnavailable, s.spec.Name, err)
		}
		*s.dst = mp
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "statemesh_guard", Type: ebpf.XDP, License: "Apache-2.0", Instructions: program(&g.m)})
	if err != nil {
		g.m.close()
		return nil, fmt.Errorf("%w: loading the program: %v", ErrUnavailable, err)
	}
	g.prog = prog
	if o.PinDir != "" {
		if err := g.pin(o.PinDir); err != nil {
			g.Close()
			return nil, err
		}
	}
	return g, nil
}

// pin pins every map under dir, replacing earlier pins.
func (g *Guard) pin(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("guard pin directory: %w", err)
	}
	for _, m := range g.m.all() {
		info, err := m.Info()
		if err != nil {
			return fmt.Errorf("guard map info: %w", err)
		}
		path := filepath.Join(dir, info.Name)
		os.Remove(path)
		if err := m.Pin(path); err != nil {
			return fmt.Errorf("pinning the guard's map %s (is %s on a bpf filesystem?): %w", info.Name, dir, err)
		}
	}
	g.pinned = dir
	return nil
}

// Attach attaches the program to an interface (a bpf_link: it goes away
// with the process, and nothing else can replace it meanwhile). A guard
// may be attached to several interfaces, each once.
func (g *Guard) Attach(ifname string, mode string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if slices.Contains(g.ifcs, ifname) {
		return fmt.Errorf("the guard is already attached to %s", ifname)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("guard interface %s: %w", ifname, err)
	}
	var flags link.XDPAttachFlags
	switch mode {
	case "native":
		flags = link.XDPDriverMode
	case "generic":
		flags = link.XDPGenericMode
	case "":
		if isVeth(ifname) {
			// A veth with a native XDP program loses GRO: the stack
			// and WireGuard get every segment of the peer's GSO
			// batches one by one (measured: TCP over a veth 17.5 →
			// 6.3 Gbit/s with an XDP program that passes everything,
			// 15.9 in generic mode; the lab's cross-region traffic
			// halved). Generic mode still drops before the stack.
			flags = link.XDPGenericMode
		}
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: g.prog, Interface: ifi.Index, Flags: flags})
	if err != nil {
		return fmt.Errorf("%w: attaching XDP to %s: %v", ErrUnavailable, ifname, err)
	}
	g.lnks, g.ifcs = append(g.lnks, l), append(g.ifcs, ifname)
	return nil
}

// isVeth reports a veth (container and lab underlays).
func isVeth(ifname string) bool {
	l, err := netlink.LinkByName(ifname)
	return err == nil && l.Type() == "veth"
}

// Interface is the first interface the guard was attached to ("" when
// detached).
func (g *Guard) Interface() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.ifcs) == 0 {
		return ""
	}
	return g.ifcs[0]
}

// Interfaces are the interfaces the guard is attached to, in the order
// they were attached.
func (g *Guard) Interfaces() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.ifcs)
}

// Close detaches the program and frees it and its maps.
func (g *Guard) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var errs []error
	for _, l := range g.lnks {
		errs = append(errs, l.Close())
	}
	g.lnks, g.ifcs = nil, nil
	err := errors.Join(errs...)
	if g.prog != nil {
		g.prog.Close()
		g.prog = nil
	}
	if g.pinned != "" {
		for _, m := range g.m.all() {
			if m != nil {
				m.Unpin()
			}
		}
		os.Remove(g.pinned)
		g.pinned = ""
	}
	g.m.close()
	g.m = maps{}
	return err
}

// Set writes e into the maps: only the entries that differ from the last
// Set are written or deleted (in place; the program keeps running).
func (g *Guard) Set(e guardplan.Entries) (guardplan.Delta, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := guardplan.Diff(g.cur, e)
	if err := g.apply(d); err != nil {
		// The maps are partly written: the next Set writes everything.
		g.cur = guardplan.Entries{}
		return d, err
	}
	g.cur = e
	return d, nil
}

func (g *Guard) apply(d guardplan.Delta) error {
	// Additions before deletions: a source moving between prefixes is
	// never absent in between.
	for _, s := range d.SourcePut {
		if err := g.m.sources.Update(lpmKey(s.Prefix), s.Classes, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("guard source %s: %w", guardplan.Unmapped(s.Prefix), err)
		}
	}
	for _, p := range d.PortPut {
		if err := g.m.ports.Update(uint32(p.Key), p.Value, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("guard port %s: %w", p.Key, err)
		}
	}
	for _, a := range d.LocalPut {
		if err := g.m.local.Update(a.As16(), uint32(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("guard local address %s: %w", a.Unmap(), err)
		}
	}
	if d.Config != nil {
		if err := g.m.config.Update(uint32(0), configBytes(*d.Config), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("guard config: %w", err)
		}
	}
	for _, p := range d.SourceDel {
		if err := g.m.sources.Delete(lpmKey(p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("guard source %s: %w", guardplan.Unmapped(p), err)
		}
	}
	for _, k := range d.PortDel {
		if err := g.m.ports.Delete(uint32(k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("guard port %s: %w", k, err)
		}
	}
	for _, a := range d.LocalDel {
		if err := g.m.local.Delete(a.As16()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("guard local address %s: %w", a.Unmap(), err)
		}
	}
	return nil
}

func lpmKey(p netip.Prefix) []byte {
	k := make([]byte, 20)
	binary.LittleEndian.PutUint32(k, uint32(p.Bits()))
	a := p.Addr().As16()
	copy(k[4:], a[:])
	return k
}

func configBytes(c guardplan.Config) []byte {
	b := make([]byte, cfgValueSize)
	binary.LittleEndian.PutUint64(b[cfgWindow:], c.WindowNanos)
	binary.LittleEndian.PutUint32(b[cfgLimitSrc:], c.HandshakesPerSource)
	binary.LittleEndian.PutUint32(b[cfgLimitAll:], c.HandshakesTotal)
	binary.LittleEndian.PutUint16(b[cfgEphFrom:], c.EphemeralFrom)
	binary.LittleEndian.PutUint16(b[cfgEphTo:], c.EphemeralTo)
	binary.LittleEndian.PutUint32(b[20:], c.Flags)
	return b
}

// Counters returns the packets counted per verdict, summed over CPUs.
func (g *Guard) Counters() (map[Verdict]uint64, error) { return g.m.counts() }

func (m *maps) counts() (map[Verdict]uint64, error) {
	out := make(map[Verdict]uint64, numVerdicts)
	for _, v := range Verdicts() {
		var per []uint64
		if err := m.counters.Lookup(uint32(v), &per); err != nil {
			return nil, fmt.Errorf("reading guard counter %s: %w", v, err)
		}
		var n uint64
		for _, x := range per {
			n += x
		}
		out[v] = n
	}
	return out, nil
}

// Contents is what the guard's maps hold, for `statemesh guard` and tests.
type Contents struct {
	// Interface names the interfaces the guard is attached to, separated
	// by commas.
	Interface string
	Sources   []guardplan.SourceEntry
	Ports     []guardplan.PortEntry
	Local     []netip.Addr
	Config    guardplan.Config
	// Tracked is the number of unknown sources with a handshake window.
	Tracked  int
	Counters map[Verdict]uint64
}

// Dump reads the maps back from the kernel (not from the agent's memory).
func (g *Guard) Dump() (Contents, error) {
	c, err := g.m.dump()
	c.Interface = strings.Join(g.Interfaces(), ",")
	return c, err
}

func (m *maps) dump() (Contents, error) {
	var c Contents
	var k []byte
	var v uint32
	it := m.sources.Iterate()
	for it.Next(&k, &v) {
		a, _ := netip.AddrFromSlice(k[4:20])
		c.Sources = append(c.Sources, guardplan.SourceEntry{Prefix: netip.PrefixFrom(a, int(binary.LittleEndian.Uint32(k))), Classes: v})
	}
	if err := it.Err(); err != nil {
		return c, fmt.Errorf("reading guard sources: %w", err)
	}
	var pk uint32
	it = m.ports.Iterate()
	for it.Next(&pk, &v) {
		c.Ports = append(c.Ports, guardplan.PortEntry{Key: guardplan.PortKey(pk), Value: v})
	}
	if err := it.Err(); err != nil {
		return c, fmt.Errorf("reading guard ports: %w", err)
	}
	var lk [16]byte
	it = m.local.Iterate()
	for it.Next(&lk, &v) {
		c.Local = append(c.Local, netip.AddrFrom16(lk))
	}
	if err := it.Err(); err != nil {
		return c, fmt.Errorf("reading guard local addresses: %w", err)
	}
	var cb []byte
	if err := m.config.Lookup(uint32(0), &cb); err != nil {
		return c, fmt.Errorf("reading guard config: %w", err)
	}
	c.Config = guardplan.Config{WindowNanos: binary.LittleEndian.Uint64(cb[cfgWindow:]), HandshakesPerSource: binary.LittleEndian.Uint32(cb[cfgLimitSrc:]),
		HandshakesTotal: binary.LittleEndian.Uint32(cb[cfgLimitAll:]), EphemeralFrom: binary.LittleEndian.Uint16(cb[cfgEphFrom:]),
		EphemeralTo: binary.LittleEndian.Uint16(cb[cfgEphTo:]), Flags: binary.LittleEndian.Uint32(cb[20:])}
	var rk [16]byte
	var rv []byte
	it = m.rate.Iterate()
	for it.Next(&rk, &rv) {
		c.Tracked++
	}
	var err error
	c.Counters, err = m.counts()
	slices.SortFunc(c.Sources, func(a, b guardplan.SourceEntry) int {
		return a.Prefix.Addr().Compare(b.Prefix.Addr())*2 + cmpInt(a.Prefix.Bits(), b.Prefix.Bits())
	})
	slices.SortFunc(c.Ports, func(a, b guardplan.PortEntry) int { return cmpInt(int(a.Key), int(b.Key)) })
	slices.SortFunc(c.Local, netip.Addr.Compare)
	return c, err
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Test runs the program once on a frame (BPF_PROG_TEST_RUN): it reports
// whether the program passes it. The counters count it like a real packet.
func (g *Guard) Test(frame []byte) (pass bool, err error) {
	ret, _, err := g.prog.Test(frame)
	if err != nil {
		return false, err
	}
	return ret == xdpPass, nil
}
