package agent

// The eBPF firewall on the WireGuard interface (issue 22, part 2), run
// with the XDP guard when the data plane is ebpf or auto: the policy is
// enforced by dataplane/ebpffw's tc programs, and nftables' overlay chain
// accepts what they marked and judges what they left (see
// firewall.State.EBPFMark). Where the programs cannot run, or the policy
// does not fit them, the overlay chain alone enforces, as before.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/statemesh/statemesh/internal/dataplane/ebpffw"
	"github.com/statemesh/statemesh/internal/dataplane/fwplan"
	"github.com/statemesh/statemesh/internal/dataplane/xdpguard"
	"github.com/statemesh/statemesh/internal/netmap"
)

// fwHook is the eBPF firewall's state (inside guardHook, under its mutex;
// mark is read without it by firewallState).
type fwHook struct {
	f       *ebpffw.Firewall
	ifname  string
	ifindex int
	why     string // why the overlay is nftables' alone ("" when eBPF runs)
	// attached is when the programs started recording flows: UDP the
	// policy denies is left to conntrack until ebpffw.UDPWarmAfter later.
	attached time.Time
}

// ebpfMark is the mark nftables' overlay chain accepts (0: none).
func (a *Agent) ebpfMark() uint32 { return a.guard.mark.Load() }

// wgInterface is the name of the map's WireGuard interface on this node.
func (a *Agent) wgInterface(m netmap.Map) string {
	if a.cfg.Interface != "" {
		return a.cfg.Interface
	}
	return m.Interface.Name
}

// syncEBPFFirewallLocked brings the eBPF firewall in line with the choice
// and the map; it reports whether nftables' table must be re-rendered
// (the mark rule came or went).
func (a *Agent) syncEBPFFirewallLocked(m netmap.Map, want bool) (rerender bool) {
	h := &a.guard
	fh := &h.fw
	before := h.mark.Load()
	stop := func(why string) {
		if fh.f != nil {
			fh.f.Close()
			fh.f = nil
		}
		fh.why = why
		h.mark.Store(0)
	}
	ifname := a.wgInterface(m)
	switch {
	case !want:
		stop("")
	case m.Firewall == nil:
		stop("no policy in the spec: nothing to enforce")
	default:
		e, err := fwplan.Compile(m.Firewall)
		if err != nil {
			stop(err.Error())
			break
		}
		ifi, ierr := net.InterfaceByName(ifname)
		if fh.f != nil && (ierr != nil || ifi.Index != fh.ifindex || ifname != fh.ifname) {
			stop("the WireGuard interface was recreated") // attached again below
		}
		if ierr != nil {
			stop(fmt.Sprintf("WireGuard interface %s: %v", ifname, ierr))
			break
		}
		if fh.f == nil {
			f, err := ebpffw.Load(ebpffw.Options{PinDir: filepath.Join(xdpguard.DefaultPinDir, ifname)})
			if err != nil && !errors.Is(err, ebpffw.ErrUnavailable) {
				a.log.Warn("eBPF firewall maps not pinned: statemesh guard cannot show them (mount a bpf filesystem on /sys/fs/bpf)", "err", err)
				f, err = ebpffw.Load(ebpffw.Options{})
			}
			if err == nil {
				if err = f.Set(e, a.ebpfFirewallState(m, false)); err == nil {
					err = f.Attach(ifname)
				}
				if err != nil {
					f.Close()
				}
			}
			if err != nil {
				stop(err.Error())
				a.log.Warn("eBPF firewall unavailable; nftables enforces the overlay policy alone", "err", err)
				break
			}
			fh.f, fh.ifname, fh.ifindex, fh.why, fh.attached = f, ifname, ifi.Index, "", time.Now()
			h.mark.Store(ebpffw.DefaultMark)
			a.log.Info("eBPF firewall attached", "interface", ifname)
			break
		}
		if err := fh.f.Set(e, a.ebpfFirewallState(m, time.Since(fh.attached) > ebpffw.UDPWarmAfter)); err != nil {
			stop("updating its maps: " + err.Error())
			a.log.Error("eBPF firewall maps; nftables enforces the overlay policy alone", "err", err)
		}
	}
	return h.mark.Load() != before
}

// ebpfFirewallState: the node's own addresses and pods are the firewall's
// destinations; gateways answer echo requests.
func (a *Agent) ebpfFirewallState(m netmap.Map, udpWarm bool) ebpffw.State {
	s := ebpffw.State{GatewayEcho: m.Self.Role == netmap.RoleGateway, UDPWarm: udpWarm}
	if as, err := net.InterfaceAddrs(); err == nil {
		for _, x := range as {
			if p, err := netip.ParsePrefix(x.String()); err == nil {
				s.Dests = append(s.Dests, netip.PrefixFrom(p.Addr().Unmap(), p.Addr().Unmap().BitLen()))
			}
		}
	}
	s.Dests = append(s.Dests, m.Self.PodPrefixes...)
	return s
}

// rerenderFirewall re-applies nftables' table (the mark rule changed), for
// the map last applied to it (m until there is one).
func (a *Agent) rerenderFirewall(ctx context.Context, m netmap.Map) {
	if a.fw == nil {
		return
	}
	a.fwMu.Lock()
	defer a.fwMu.Unlock()
	if a.fwMap.Interface.Name != "" {
		m = a.fwMap
	}
	if m.Interface.Name == "" {
		return
	}
	if err := a.fw.Apply(ctx, a.firewallState(m)); err != nil {
		a.log.Error("re-applying the nftables table for the eBPF firewall", "err", err)
	}
}

// firewallPart says who enforces the overlay policy, for the status line.
func (a *Agent) firewallPartLocked() string {
	fh := &a.guard.fw
	if fh.f != nil {
		return "overlay policy in eBPF on " + fh.ifname + " (nftables judges what it leaves)"
	}
	if fh.why != "" {
		return "overlay policy in nftables (" + fh.why + ")"
	}
	return "overlay policy in nftables"
}

var descFWPackets = prometheus.NewDesc("statemesh_agent_ebpf_firewall_packets_total",
	"Packets the eBPF firewall on the WireGuard interface judged, by verdict (allowed, established, denied, transit, unjudged, malformed) and action.", []string{"verdict", "action"}, nil)

func (a *Agent) collectEBPFFirewallLocked(ch chan<- prometheus.Metric) {
	f := a.guard.fw.f
	if f == nil {
		return
	}
	counts, err := f.Counters()
	if err != nil {
		return
	}
	for _, v := range ebpffw.Verdicts() {
		act := "pass"
		if v.Drop() {
			act = "drop"
		}
		ch <- prometheus.MustNewConstMetric(descFWPackets, prometheus.CounterValue, float64(counts[v]), v.String(), act)
	}
}
