package agent

// The underlay guard's hook into the agent (issue 22): which enforcement a
// node runs (ebpf, nftables or auto), the XDP guard on its underlay
// interface, kept in line with each applied map and with the endpoints
// WireGuard learned, and its per-verdict counters as metrics. Everything
// else of the agent reaches it through four calls: initGuard (New),
// syncGuard (apply), guardLoop (Run), closeGuard (Close).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statemesh/statemesh/internal/dataplane/guardplan"
	"github.com/statemesh/statemesh/internal/dataplane/xdpguard"
	"github.com/statemesh/statemesh/internal/netmap"
)

// Dataplane choices (--dataplane, the spec's dataplane.firewall).
const (
	DataplaneEBPF     = "ebpf"
	DataplaneNFTables = "nftables"
	DataplaneAuto     = "auto"
)

// GuardConfig configures the underlay guard.
type GuardConfig struct {
	// Dataplane is ebpf, nftables or auto; empty: the map's choice (the
	// spec's dataplane.firewall), else nftables.
	Dataplane string
	// Interface is the underlay interface (default: the one this host
	// reaches the controller, or its --endpoint, through).
	Interface string
	// Allow are ranges WireGuard may always come from besides the peers'
	// endpoints: the underlay ranges, operators' clients.
	Allow []netip.Prefix
	// ManagementFrom restricts the --underlay-allow ports to these sources
	// in the guard (default: open to all, as in the nftables table).
	ManagementFrom []netip.Prefix
	// HandshakesPerSource and HandshakesTotal limit WireGuard handshake
	// initiations from unknown sources per second (0: defaults).
	HandshakesPerSource uint32
	HandshakesTotal     uint32
	// AttachMode is "", native or generic.
	AttachMode string
	// PinDir is where the guard's maps are pinned (default
	// /sys/fs/bpf/statemesh/IFNAME).
	PinDir string
	// LearnEvery is how often the endpoints WireGuard learned (roaming,
	// NAT) are added to the guard's sources (default 1s).
	LearnEvery time.Duration
}

// guardHook is the agent's guard state.
type guardHook struct {
	mu    sync.Mutex
	g     *xdpguard.Guard
	mode  string // the effective choice the guard was last set up for
	state string // what the node runs and why (status, doctor)
	last  netmap.Map
	// fw is the eBPF firewall on the WireGuard interface (ebpffw.go);
	// mark is the bit nftables' overlay chain accepts (0: none).
	fw   fwHook
	mark atomic.Uint32
	// retryAt is when a guard that could not start is tried again (the
	// interface may come later; a kernel without XDP will not).
	retryAt time.Time
}

// guardRetry is how often a guard that could not start is tried again.
const guardRetry = 30 * time.Second

// initGuard registers the guard's metrics. The guard itself starts with
// the first map (the spec's choice arrives with it).
func (a *Agent) initGuard() {
	a.guard.state = "nftables: no map applied yet"
	a.metrics.reg.MustRegister(&guardCollector{a: a})
}

// effectiveDataplane is the flag when set, else the map's, else nftables.
func (a *Agent) effectiveDataplane(m netmap.Map) string {
	switch {
	case a.cfg.Guard.Dataplane != "":
		return a.cfg.Guard.Dataplane
	case m.Self.Dataplane != "":
		return m.Self.Dataplane
	}
	return DataplaneNFTables
}

// syncGuard brings the guard in line with m: loaded and attached when the
// choice asks for eBPF (falling back to nftables alone under auto), its
// maps updated in place, or removed when the choice is nftables.
func (a *Agent) syncGuard(ctx context.Context, m netmap.Map) {
	h := &a.guard
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = m
	mode := a.effectiveDataplane(m)
	retry := h.g == nil && (mode == DataplaneEBPF || mode == DataplaneAuto) && !h.retryAt.IsZero() && time.Now().After(h.retryAt)
	if mode != h.mode || retry {
		h.mode = mode
		h.retryAt = time.Time{}
		a.stopGuardLocked()
		switch mode {
		case DataplaneNFTables:
			h.state = "nftables: chosen (--dataplane or the spec's dataplane.firewall)"
			if a.cfg.Guard.Dataplane == "" && m.Self.Dataplane == "" {
				h.state = "nftables: the default (neither --dataplane nor the spec's dataplane.firewall asks for eBPF)"
			}
		case DataplaneEBPF, DataplaneAuto:
			if err := a.startGuardLocked(); err != nil {
				h.retryAt = time.Now().Add(guardRetry)
				if mode == DataplaneEBPF {
					h.state = "nftables: eBPF was asked for but cannot run: " + err.Error()
					a.log.Error("XDP guard not running although --dataplane=ebpf; nftables alone protects the underlay", "err", err)
				} else {
					h.state = "nftables: auto, and eBPF cannot run here: " + err.Error()
					a.log.Warn("XDP guard unavailable; nftables alone protects the underlay", "err", err)
				}
			}
		default:
			h.state = fmt.Sprintf("nftables: unknown dataplane choice %q", mode)
		}
	}
	if h.g != nil {
		a.setGuardLocked(ctx)
	}
	a.syncFirewallPartLocked(ctx, m, mode)
}

// syncFirewallPartLocked runs the eBPF firewall where the choice asks for
// eBPF, re-renders nftables' table when the mark rule comes or goes, and
// says who enforces what.
func (a *Agent) syncFirewallPartLocked(ctx context.Context, m netmap.Map, mode string) {
	want := (mode == DataplaneEBPF || mode == DataplaneAuto) && m.Interface.Name != ""
	if a.syncEBPFFirewallLocked(m, want) {
		a.rerenderFirewall(ctx, m)
	}
}

func (a *Agent) startGuardLocked() error {
	h := &a.guard
	ifnames, err := a.guardInterfaces()
	if err != nil {
		return err
	}
	// Pinned, so that statemesh guard and bpftool can read the maps; where
	// /sys/fs/bpf is no bpf filesystem, unpinned. A gateway's one set of
	// maps is pinned under its underlay interface's name.
	pins := a.cfg.Guard.PinDir
	if pins == "" {
		pins = filepath.Join(xdpguard.DefaultPinDir, ifnames[0])
	}
	g, err := xdpguard.Load(xdpguard.Options{Log: a.log, PinDir: pins})
	if err != nil && !errors.Is(err, xdpguard.ErrUnavailable) {
		a.log.Warn("XDP guard maps not pinned: statemesh guard cannot show them (mount a bpf filesystem on /sys/fs/bpf)", "err", err)
		g, err = xdpguard.Load(xdpguard.Options{Log: a.log})
	}
	if err != nil {
		return err
	}
	// Maps first, then attach: the program never runs on empty maps.
	h.g = g
	if err := a.setGuardLocked(context.Background()); err != nil {
		g.Close()
		h.g = nil
		return err
	}
	for _, ifname := range ifnames {
		if err := g.Attach(ifname, a.cfg.Guard.AttachMode); err != nil {
			g.Close()
			h.g = nil
			return err
		}
	}
	h.state = "ebpf: XDP guard on " + strings.Join(ifnames, ", ")
	a.log.Info("XDP guard attached", "interfaces", ifnames)
	return nil
}

// guardInterfaces are the interfaces the guard runs on: --guard-interface,
// else the one carrying --endpoint (or the route to the controller) and,
// on a gateway whose --public-endpoint is an address of another interface
// of this host (its WAN: where the internet's floods arrive), that one too.
func (a *Agent) guardInterfaces() ([]string, error) {
	if a.cfg.Guard.Interface != "" {
		return []string{a.cfg.Guard.Interface}, nil
	}
	ifname, err := a.underlayInterface()
	if err != nil {
		return nil, fmt.Errorf("finding the underlay interface (set --guard-interface): %w", err)
	}
	out := []string{ifname}
	if ap, err := netip.ParseAddrPort(a.cfg.PublicEndpoint); err == nil {
		// A public address behind NAT is no interface's: nothing to add.
		if wan, err := interfaceWith(ap.Addr().Unmap()); err == nil && wan != ifname {
			out = append(out, wan)
		}
	}
	return out, nil
}

func (a *Agent) stopGuardLocked() {
	h := &a.guard
	if h.g != nil {
		if err := h.g.Close(); err != nil {
			a.log.Warn("detaching the XDP guard", "err", err)
		}
		h.g = nil
	}
}

// setGuardLocked writes the guard's maps (in place) for the last map, the
// endpoints WireGuard learned, and the interface's addresses.
func (a *Agent) setGuardLocked(context.Context) error {
	h := &a.guard
	n := guardplan.Node{WireGuardFrom: a.cfg.Guard.Allow, ManagementFrom: a.cfg.Guard.ManagementFrom, Open: a.cfg.UnderlayAllow,
		HandshakesPerSource: a.cfg.Guard.HandshakesPerSource, HandshakesTotal: a.cfg.Guard.HandshakesTotal}
	n.Learned = a.learnedEndpoints()
	ifnames := h.g.Interfaces()
	if len(ifnames) == 0 { // maps first, then attach
		ifnames, _ = a.guardInterfaces()
	}
	for _, ifname := range ifnames {
		n.Local = append(n.Local, interfaceAddrs(ifname)...)
	}
	e, err := guardplan.Compile(guardplan.FromMap(h.last, n))
	if err != nil {
		a.log.Error("XDP guard entries", "err", err)
		return err
	}
	if d, err := h.g.Set(e); err != nil {
		a.log.Error("updating the XDP guard's maps", "err", err)
		return err
	} else if !d.Empty() {
		a.log.Debug("XDP guard maps updated", "sources+", len(d.SourcePut), "sources-", len(d.SourceDel), "ports+", len(d.PortPut), "ports-", len(d.PortDel))
	}
	return nil
}

// learnedEndpoints are the peers' endpoints as the WireGuard device knows
// them: roamed or behind NAT, authenticated by WireGuard itself.
func (a *Agent) learnedEndpoints() []netip.Addr {
	a.mu.Lock()
	dev := a.dev
	a.mu.Unlock()
	if dev == nil {
		return nil
	}
	st, err := dev.Status()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, p := range st {
		if p.Endpoint.IsValid() {
			out = append(out, p.Endpoint.Addr().Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// guardLoop adds the endpoints WireGuard learned to the guard: a roaming
// peer's first handshake from its new address passes as an unknown
// source's (rate limited); once WireGuard has authenticated it, its data
// passes as a known source's within LearnEvery.
func (a *Agent) guardLoop(ctx context.Context) {
	every := a.cfg.Guard.LearnEvery
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h := &a.guard
		h.mu.Lock()
		if h.g != nil {
			a.setGuardLocked(ctx)
		}
		if h.fw.f != nil {
			// Addresses move, the WireGuard interface may be recreated.
			// (A firewall that failed is retried with the next map.)
			a.syncFirewallPartLocked(ctx, h.last, h.mode)
		}
		h.mu.Unlock()
	}
}

// closeGuard detaches the guard (the node falls back to nftables alone).
func (a *Agent) closeGuard() {
	a.guard.mu.Lock()
	defer a.guard.mu.Unlock()
	a.stopGuardLocked()
	a.syncEBPFFirewallLocked(a.guard.last, false)
}

// dataplaneStatus says what the node runs and why (status reports, doctor).
func (a *Agent) dataplaneStatus() string {
	h := &a.guard
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mode != DataplaneEBPF && h.mode != DataplaneAuto {
		return h.state
	}
	guard := h.state
	if h.g == nil && h.fw.f != nil {
		// The firewall runs, the guard does not: the node runs eBPF.
		_, why, _ := strings.Cut(guard, ": ")
		guard = "ebpf: no XDP guard (" + why + ")"
	}
	return guard + "; " + a.firewallPartLocked()
}

// underlayInterface is the interface carrying this node's endpoint, or its
// route to the controller.
func (a *Agent) underlayInterface() (string, error) {
	if ap, err := netip.ParseAddrPort(a.cfg.Endpoint); err == nil {
		if ifname, err := interfaceWith(ap.Addr().Unmap()); err == nil {
			return ifname, nil
		}
		// The address has moved (a new lease, a roaming host): the
		// interface this host reaches it through is where it was.
		local, err := routeFrom(ap.String())
		if err != nil {
			return "", fmt.Errorf("no interface has address %s, and no route to it: %w", ap.Addr(), err)
		}
		return interfaceWith(local)
	}
	u, err := url.Parse(a.cfg.Controller)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("no endpoint and no controller URL to find it from")
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "443")
	}
	local, err := routeFrom(host)
	if err != nil {
		return "", err
	}
	return interfaceWith(local)
}

// routeFrom is the local address this host sends to hostport from (no
// packet is sent: connecting a UDP socket picks the route).
func routeFrom(hostport string) (netip.Addr, error) {
	c, err := net.Dial("udp", hostport)
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// interfaceWith is the interface that has the address.
func interfaceWith(local netip.Addr) (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	for _, ifi := range ifs {
		if slices.Contains(interfaceAddrs(ifi.Name), local) {
			return ifi.Name, nil
		}
	}
	return "", errors.New("no interface has address " + local.String())
}

// interfaceAddrs are an interface's unicast addresses.
func interfaceAddrs(name string) []netip.Addr {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil
	}
	as, err := ifi.Addrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, x := range as {
		if p, err := netip.ParsePrefix(x.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// guardCollector exports the guard's counters at scrape time.
type guardCollector struct{ a *Agent }

var (
	descGuardPackets  = prometheus.NewDesc("statemesh_agent_guard_packets_total", "Packets the XDP guard judged on the underlay interface, by verdict and action (pass, drop).", []string{"verdict", "action"}, nil)
	descGuardAttached = prometheus.NewDesc("statemesh_agent_guard_attached", "1 when the XDP guard runs on the underlay interface (dataplane ebpf, or auto where it loads).", nil, nil)
)

func (c *guardCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descGuardPackets
	ch <- descGuardAttached
	ch <- descFWPackets
}

func (c *guardCollector) Collect(ch chan<- prometheus.Metric) {
	h := &c.a.guard
	h.mu.Lock()
	defer h.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descGuardAttached, prometheus.GaugeValue, b2f(h.g != nil))
	c.a.collectEBPFFirewallLocked(ch)
	if h.g == nil {
		return
	}
	counts, err := h.g.Counters()
	if err != nil {
		return
	}
	for _, v := range xdpguard.Verdicts() {
		act := "pass"
		if v.Drop() {
			act = "drop"
		}
		ch <- prometheus.MustNewConstMetric(descGuardPackets, prometheus.CounterValue, float64(counts[v]), v.String(), act)
	}
}
