// Package ebpffw owns the eBPF firewall on a node's WireGuard interface:
// a tc ingress program that enforces the overlay policy (fwplan's maps)
// on traffic to the node and its pods, and a tc egress program that
// records the node's own flows so their replies pass as established.
// Packets it does not judge (fragments, extension headers, related ICMP)
// go on unmarked to nftables' overlay chain, which stays the fallback and
// the judge of those; packets it allows carry a mark bit the chain's
// first rule accepts. Maps are written in place from fwplan deltas.
package ebpffw

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/statemesh/statemesh/internal/dataplane/fwplan"
)

// ErrUnavailable wraps every reason the kernel cannot run the firewall.
var ErrUnavailable = errors.New("the eBPF firewall cannot run on this kernel")

// DefaultMark is the skb mark bit the firewall sets on packets it allowed.
const DefaultMark = 0x00100000

// Options configure the programs and their maps.
type Options struct {
	// L2 is the link header length in front of IP: 0 on WireGuard (the
	// default), 14 on Ethernet (tests).
	L2 int
	// MaxSources, MaxFlows bound the source trie and the flow table
	// (defaults 65536, 262144).
	MaxSources uint32
	MaxFlows   uint32
	// PinDir, when set, is a directory on a bpf filesystem where the maps
	// are pinned while the firewall runs (statemesh guard reads them).
	PinDir string
}

// Map names (the pinned files' names, what bpftool shows).
const (
	MapSources  = "smf_sources"
	MapPorts    = "smf_ports"
	MapDests    = "smf_dests"
	MapConfig   = "smf_config"
	MapFlows    = "smf_flows"
	MapCounters = "smf_verdicts"
)

// State is what the firewall enforces besides the policy's entries.
type State struct {
	// Dests are the node's own addresses (/32, /128) and its pod prefixes:
	// traffic to anything else is transit, not the firewall's.
	Dests []netip.Prefix
	// GatewayEcho lets echo requests in (gateways answer the mesh's probes).
	GatewayEcho bool
	// Mark is the bit set on allowed packets (default DefaultMark).
	Mark uint32
	// UDPWarm: the egress program has been recording for longer than
	// UDP's conntrack timeouts (UDPWarmAfter), so a UDP packet the policy
	// denies and no recorded flow explains is dropped; before, it is left
	// to nftables (conntrack may know it from before the program).
	UDPWarm bool
}

// UDPWarmAfter is nf_conntrack_udp_timeout_stream's default (120 s) with
// a margin.
const UDPWarmAfter = 180 * time.Second

// Firewall is the loaded programs and maps.
type Firewall struct {
	mu       sync.Mutex
	m        maps
	in, out  *ebpf.Program
	links    []link.Link
	ifc      string
	cur      fwplan.Entries
	curDests map[netip.Prefix]bool
	curCfg   []byte
	pinned   string
}

// Load creates the maps and loads both programs.
func Load(o Options) (*Firewall, error) {
	if o.MaxSources == 0 {
		o.MaxSources = 65536
	}
	if o.MaxFlows == 0 {
		o.MaxFlows = 262144
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	f := &Firewall{}
	for _, s := range []struct {
		dst  **ebpf.Map
		spec ebpf.MapSpec
	}{
		{&f.m.sources, ebpf.MapSpec{Name: MapSources, Type: ebpf.LPMTrie, KeySize: 20, ValueSize: 8, MaxEntries: o.MaxSources, Flags: 1}},
		{&f.m.ports, ebpf.MapSpec{Name: MapPorts, Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: fwplan.MaxPorts}},
		{&f.m.dests, ebpf.MapSpec{Name: MapDests, Type: ebpf.LPMTrie, KeySize: 20, ValueSize: 4, MaxEntries: 4096, Flags: 1}},
		{&f.m.config, ebpf.MapSpec{Name: MapConfig, Type: ebpf.Array, KeySize: 4, ValueSize: cfgValueSize, MaxEntries: 1}},
		{&f.m.flows, ebpf.MapSpec{Name: MapFlows, Type: ebpf.LRUHash, KeySize: flowSize, ValueSize: 8, MaxEntries: o.MaxFlows}},
		{&f.m.counters, ebpf.MapSpec{Name: MapCounters, Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(numVerdicts)}},
	} {
		mp, err := ebpf.NewMap(&s.spec)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: creating map %s: %v", ErrUnavailable, s.spec.Name, err)
		}
		*s.dst = mp
	}
	var err error
	if f.in, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "statemesh_fw_in", Type: ebpf.SchedCLS, License: "Apache-2.0", Instructions: ingress(&f.m, int32(o.L2))}); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: loading the ingress program: %v", ErrUnavailable, err)
	}
	if f.out, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "statemesh_fw_out", Type: ebpf.SchedCLS, License: "Apache-2.0", Instructions: egress(&f.m, int32(o.L2))}); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: loading the egress program: %v", ErrUnavailable, err)
	}
	if o.PinDir != "" {
		if err := os.MkdirAll(o.PinDir, 0o700); err != nil {
			f.Close()
			return nil, fmt.Errorf("firewall pin directory: %w", err)
		}
		for _, m := range f.m.all() {
			info, err := m.Info()
			if err == nil {
				path := filepath.Join(o.PinDir, info.Name)
				os.Remove(path)
				err = m.Pin(path)
			}
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("pinning the firewall's maps in %s: %w", o.PinDir, err)
			}
		}
		f.pinned = o.PinDir
	}
	return f, nil
}

// Summary is what a running firewall's pinned maps hold, for statemesh
// guard.
type Summary struct {
	Sources, Ports, Dests, Flows int
	AnyPort                      uint64
	Flags, Mark                  uint32
	Counters                     map[Verdict]uint64
}

// Inspect reads the maps a running firewall pinned under dir.
func Inspect(dir string) (Summary, error) {
	var m maps
	defer func() {
		for _, x := range m.all() {
			if x != nil {
				x.Close()
			}
		}
	}()
	for _, x := range []struct {
		dst  **ebpf.Map
		name string
	}{{&m.sources, MapSources}, {&m.ports, MapPorts}, {&m.dests, MapDests}, {&m.config, MapConfig}, {&m.flows, MapFlows}, {&m.counters, MapCounters}} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, x.name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return Summary{}, fmt.Errorf("no eBPF firewall maps pinned in %s: %w", dir, err)
		}
		*x.dst = mp
	}
	var s Summary
	count := func(mp *ebpf.Map) int {
		n := 0
		var k, v []byte
		for it := mp.Iterate(); it.Next(&k, &v); {
			n++
		}
		return n
	}
	s.Sources, s.Ports, s.Dests, s.Flows = count(m.sources), count(m.ports), count(m.dests), count(m.flows)
	var cfg []byte
	if err := m.config.Lookup(uint32(0), &cfg); err != nil {
		return s, fmt.Errorf("reading the firewall's config: %w", err)
	}
	s.AnyPort = binary.LittleEndian.Uint64(cfg[cfgAnyPort:])
	s.Flags = binary.LittleEndian.Uint32(cfg[cfgFlags:])
	s.Mark = binary.LittleEndian.Uint32(cfg[cfgMark:])
	var err error
	s.Counters, err = m.counts()
	return s, err
}

// Attach attaches ingress and egress to an interface (tcx links).
func (f *Firewall) Attach(ifname string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.links) > 0 {
		return fmt.Errorf("the firewall is already attached to %s", f.ifc)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("firewall interface %s: %w", ifname, err)
	}
	// Egress first: replies to flows that start meanwhile are known.
	for _, a := range []struct {
		p *ebpf.Program
		t ebpf.AttachType
	}{{f.out, ebpf.AttachTCXEgress}, {f.in, ebpf.AttachTCXIngress}} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: a.p, Attach: a.t})
		if err != nil {
			for _, l := range f.links {
				l.Close()
			}
			f.links = nil
			return fmt.Errorf("%w: attaching to %s: %v", ErrUnavailable, ifname, err)
		}
		f.links = append(f.links, l)
	}
	f.ifc = ifname
	return nil
}

// Close detaches and frees everything.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	for _, l := range f.links {
		err = errors.Join(err, l.Close())
	}
	f.links, f.ifc = nil, ""
	for _, p := range []*ebpf.Program{f.in, f.out} {
		if p != nil {
			p.Close()
		}
	}
	f.in, f.out = nil, nil
	for _, m := range f.m.all() {
		if m != nil {
			if f.pinned != "" {
				m.Unpin()
			}
			m.Close()
		}
	}
	if f.pinned != "" {
		os.Remove(f.pinned)
		f.pinned = ""
	}
	f.m = maps{}
	return err
}

// Set writes the policy's entries and the state in place (only what
// changed since the last Set).
func (f *Firewall) Set(e fwplan.Entries, s State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.Mark == 0 {
		s.Mark = DefaultMark
	}
	d := fwplan.Diff(f.cur, e)
	for p, b := range d.SourcePut {
		if err := f.m.sources.Update(lpmKey(p), b, ebpf.UpdateAny); err != nil {
			f.cur = fwplan.Entries{}
			return fmt.Errorf("firewall source %s: %w", p, err)
		}
	}
	for k, b := range d.PortPut {
		if err := f.m.ports.Update(uint32(k), b, ebpf.UpdateAny); err != nil {
			f.cur = fwplan.Entries{}
			return fmt.Errorf("firewall port %#x: %w", uint32(k), err)
		}
	}
	dests := map[netip.Prefix]bool{}
	for _, p := range s.Dests {
		p = mapped(p)
		dests[p] = true
		if !f.curDests[p] {
			if err := f.m.dests.Update(lpmKey(p), uint32(1), ebpf.UpdateAny); err != nil {
				f.curDests = nil
				return fmt.Errorf("firewall destination %s: %w", p, err)
			}
		}
	}
	cfg := make([]byte, cfgValueSize)
	binary.LittleEndian.PutUint64(cfg[cfgAnyPort:], e.AnyPort)
	var flags uint32
	if s.GatewayEcho {
		flags |= flagGatewayEcho
	}
	if s.UDPWarm {
		flags |= flagUDPWarm
	}
	binary.LittleEndian.PutUint32(cfg[cfgFlags:], flags)
	binary.LittleEndian.PutUint32(cfg[cfgMark:], s.Mark)
	if string(cfg) != string(f.curCfg) {
		if err := f.m.config.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("firewall config: %w", err)
		}
		f.curCfg = cfg
	}
	for _, p := range d.SourceDel {
		if err := f.m.sources.Delete(lpmKey(p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			f.cur = fwplan.Entries{}
			return fmt.Errorf("firewall source %s: %w", p, err)
		}
	}
	for _, k := range d.PortDel {
		if err := f.m.ports.Delete(uint32(k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			f.cur = fwplan.Entries{}
			return fmt.Errorf("firewall port %#x: %w", uint32(k), err)
		}
	}
	for p := range f.curDests {
		if !dests[p] {
			if err := f.m.dests.Delete(lpmKey(p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				f.curDests = nil
				return fmt.Errorf("firewall destination %s: %w", p, err)
			}
		}
	}
	f.cur, f.curDests = e, dests
	return nil
}

// Counters returns the packets per verdict, summed over CPUs.
func (f *Firewall) Counters() (map[Verdict]uint64, error) { return f.m.counts() }

func (m *maps) counts() (map[Verdict]uint64, error) {
	out := map[Verdict]uint64{}
	for _, v := range Verdicts() {
		var per []uint64
		if err := m.counters.Lookup(uint32(v), &per); err != nil {
			return nil, fmt.Errorf("reading firewall counter %s: %w", v, err)
		}
		for _, x := range per {
			out[v] += x
		}
	}
	return out, nil
}

func mapped(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4() {
		return netip.PrefixFrom(netip.AddrFrom16(a.As16()), p.Bits()+96).Masked()
	}
	return p.Masked()
}

func lpmKey(p netip.Prefix) []byte {
	k := make([]byte, 20)
	binary.LittleEndian.PutUint32(k, uint32(p.Bits()))
	a := p.Addr().As16()
	copy(k[4:], a[:])
	return k
}
