package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/statemesh/statemesh/internal/dataplane/pkttest"
	"github.com/statemesh/statemesh/internal/lab"
	"github.com/statemesh/statemesh/internal/testenv"
)

// TestLabEBPF is issue 22's lab test: one small lab (2 regions × 2 clusters
// × 1 node, 2 gateways per region, the lab's policy and a client) started
// with the data plane ebpf, switched to nftables and back with an applied
// spec, so that every figure comes from the same namespaces:
//
//   - the measured policy matrix is the same, probe by probe, with ebpf and
//     with nftables, and with ebpf the XDP guard (on every host's underlay,
//     and on gateways' WAN) and the eBPF firewall on sm0 are attached and
//     judged the probes (their counters moved): eBPF cannot have fallen
//     back silently;
//   - cross-region throughput with no flood and under a junk-handshake
//     flood from a namespace on the WAN that is nobody's peer, with the
//     XDP guard and (nftables) without it: with it, ≥ 0.9 of the no-flood
//     figure (the bar); all figures are printed;
//   - a node whose underlay address moves keeps its session through its
//     gateway with the guard on: the gateway's guard passes the node's
//     handshake from the unknown address, WireGuard moves the endpoint, the
//     agent teaches it to the guard, and traffic flows again (the outage is
//     printed beside another node's move without the guard).
//
// The subtests run in order and share the lab (CI time): each leaves the
// data plane the next expects.
func TestLabEBPF(t *testing.T) {
	testenv.RequireBinary(t, "iperf3")
	l := upLabWith(t, lab.Config{Regions: 2, Clusters: 2, Nodes: 1, Gateways: 2, GatewayTimeout: 1500 * time.Millisecond,
		Policy: true, Clients: 1, Dataplane: "ebpf"})
	var withEBPF *lab.Matrix

	t.Run("EBPFAttachedAndJudgesTheMatrix", func(t *testing.T) {
		waitDataplane(t, l, "ebpf")
		before := ebpfCounters(t, l)
		withEBPF = check(t, l)
		after := ebpfCounters(t, l)
		// The policy's denials were the eBPF firewall's drops, its
		// allowances its marks, on the nodes the probes went to.
		for _, v := range []string{"fw/denied", "fw/allowed", "guard/wg_known"} {
			if after[v] <= before[v] {
				t.Errorf("counter %s did not move during lab check (%d → %d): eBPF did not judge the probes", v, before[v], after[v])
			}
		}
		t.Logf("eBPF counters over lab check (all hosts): %s", counterDelta(before, after))
	})

	// Throughput across regions: eu-central-c1-n1 → us-east-c1-n1 (both
	// frontend: the policy allows every port within a segment), so the
	// data enters us-east through the WAN interface of its designated
	// gateway for c1, where the stranger floods.
	src, dst := host(t, l, "eu-central-c1-n1"), host(t, l, "us-east-c1-n1")
	srv := exec.Command("nsenter", "-t", fmt.Sprint(l.State.Holders[dst.Name]), "-n", "-m", "--", "iperf3", "-s")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	fl := newFlooder(t, l)
	victim := designated(t, l, "us-east", "c1")
	target := netip.AddrPortFrom(host(t, l, victim).WAN, 51820)
	// The control: the same flood at us-east's other gateway, which the
	// measured traffic does not cross. On one machine the flood's making
	// and switching cost the cores everyone shares, whichever gateway it
	// hits; what the victim's own handling of it costs is the difference.
	offPath := "us-east-gw1"
	if victim == offPath {
		offPath = "us-east-gw2"
	}
	control := netip.AddrPortFrom(host(t, l, offPath).WAN, 51820)
	victimMAC, controlMAC := wanMAC(t, l, victim), wanMAC(t, l, offPath)
	srcPre := []string{"nsenter", "-t", fmt.Sprint(l.State.Holders[src.Name]), "-n", "-m", "--"}
	// rounds measures the throughput without a flood, with the flood at
	// the victim and with the flood at the off-path gateway, in an order
	// that rotates every round.
	type figures struct {
		none, victim, control []float64
		sent                  int
	}
	rounds := func(t *testing.T, f *figures, n int) {
		iperf(t, srcPre, dst.Overlay.String()) // warm up
		for round := range n {
			for i := range 3 {
				switch (round + i) % 3 {
				case 0:
					f.none = append(f.none, iperf(t, srcPre, dst.Overlay.String()))
				case 1, 2:
					at, mac, into := target, victimMAC, &f.victim
					if (round+i)%3 == 2 {
						at, mac, into = control, controlMAC, &f.control
					}
					stop := make(chan struct{})
					n := fl.flood(t, at, mac, floodRate, 15*time.Second, stop)
					*into = append(*into, iperf(t, srcPre, dst.Overlay.String()))
					close(stop)
					f.sent += <-n
				}
			}
		}
	}
	var ebpfFig figures

	t.Run("FloodWithGuard", func(t *testing.T) {
		before := guardJSON(t, l, victim)
		beforeCtl := guardJSON(t, l, offPath)
		rounds(t, &ebpfFig, 3)
		if r := pairedMedian(ebpfFig.victim, ebpfFig.control); r < 0.9 {
			// Borderline on a busy machine (a 4 s iperf3 swings by tens
			// of percent here): 3 more rounds, and the verdict is the
			// median of all 6. A gateway that pays for the flood stays
			// far below (nftables: 0.4-0.8).
			t.Logf("victim ÷ off path %.3f after 3 rounds (%v %v): 3 more", r, ebpfFig.victim, ebpfFig.control)
			rounds(t, &ebpfFig, 3)
		}
		after := guardJSON(t, l, victim)
		afterCtl := guardJSON(t, l, offPath)
		dropped := after.Counters["wg_ratelimited"] - before.Counters["wg_ratelimited"] + afterCtl.Counters["wg_ratelimited"] - beforeCtl.Counters["wg_ratelimited"]
		passed := after.Counters["wg_handshake"] - before.Counters["wg_handshake"] + afterCtl.Counters["wg_handshake"] - beforeCtl.Counters["wg_handshake"]
		t.Logf("flood from %s (nobody's peer) at %s (on the path) and %s (off it): %d junk initiations sent at %d/s; the guards dropped %d (wg_ratelimited), passed %d (wg_handshake, the per-source limit)",
			fl.src.Addr(), target, control, ebpfFig.sent, floodRate, dropped, passed)
		if dropped < uint64(ebpfFig.sent)*9/10 {
			t.Errorf("the guards dropped %d of %d flood packets: the flood did not meet them", dropped, ebpfFig.sent)
		}
		f := ebpfFig
		t.Logf("cross-region throughput, data plane ebpf: no flood %.2f Gbit/s, flood at the victim with the XDP guard %.2f (%.3f of no flood), the same flood off the path %.2f (%.3f of no flood); the victim's own share: %.3f (medians of %d, paired ratios; all %v %v %v)",
			median(f.none), median(f.victim), pairedMedian(f.victim, f.none), median(f.control), pairedMedian(f.control, f.none), pairedMedian(f.victim, f.control), len(f.none), f.none, f.victim, f.control)
		if r := pairedMedian(f.victim, f.control); r < 0.9 {
			t.Errorf("with the XDP guard the flood at the victim leaves %.3f of the throughput the same flood leaves when it hits a gateway off the path, want ≥ 0.9", r)
		}
	})

	t.Run("MatrixIdenticalWithNFTables", func(t *testing.T) {
		if withEBPF == nil {
			t.Skip("no ebpf matrix")
		}
		setDataplane(t, l, "nftables")
		withNFT := check(t, l)
		ebpfRes := map[[2]string]lab.ProbeResult{}
		for _, r := range withEBPF.Results {
			ebpfRes[[2]string{r.From, r.To}] = r
		}
		if len(withNFT.Results) != len(withEBPF.Results) {
			t.Errorf("%d probes with nftables, %d with ebpf", len(withNFT.Results), len(withEBPF.Results))
		}
		allowed, denied := 0, 0
		for _, r := range withNFT.Results {
			e, ok := ebpfRes[[2]string{r.From, r.To}]
			switch {
			case !ok:
				t.Errorf("%s → %s probed with nftables only", r.From, r.To)
			case e.ICMP != r.ICMP || e.TCP != r.TCP:
				t.Errorf("%s → %s: ebpf icmp=%v tcp=%v, nftables icmp=%v tcp=%v", r.From, r.To, e.ICMP, e.TCP, r.ICMP, r.TCP)
			case r.TCP:
				allowed++
			default:
				denied++
			}
		}
		t.Logf("%d probes identical with ebpf and nftables (%d allowed, %d denied over TCP)", len(withNFT.Results), allowed, denied)
		if allowed == 0 || denied == 0 {
			t.Error("the matrix needs allowed and denied pairs to prove anything")
		}
	})

	t.Run("FloodWithoutGuard", func(t *testing.T) {
		if out := hostOut(t, l, victim, "ip", "link", "show", "wan0"); strings.Contains(out, "prog/xdp") {
			t.Fatalf("nftables chosen, but %s still has an XDP program:\n%s", victim, out)
		}
		var f figures
		rounds(t, &f, 3)
		t.Logf("cross-region throughput, data plane nftables: no flood %.2f Gbit/s, flood at the victim without a guard %.2f (%.3f of no flood), the same flood off the path %.2f (%.3f of no flood); the victim's own share %.3f (all %v %v %v; %d junk initiations at %d/s)",
			median(f.none), median(f.victim), pairedMedian(f.victim, f.none), median(f.control), pairedMedian(f.control, f.none), pairedMedian(f.victim, f.control), f.none, f.victim, f.control, f.sent, floodRate)
		if e := ebpfFig; len(e.none) > 0 {
			t.Logf("summary (Gbit/s, ratios paired per round): no flood %.2f (ebpf) %.2f (nftables); flood with the XDP guard %.2f = %.3f of no flood, %.3f of the off-path flood; without it (nftables) %.2f = %.3f of no flood, %.3f of the off-path flood",
				median(e.none), median(f.none), median(e.victim), pairedMedian(e.victim, e.none), pairedMedian(e.victim, e.control),
				median(f.victim), pairedMedian(f.victim, f.none), pairedMedian(f.victim, f.control))
		}
	})

	var noGuardOutage time.Duration
	t.Run("RoamingWithoutGuard", func(t *testing.T) {
		// The reference, still on nftables: us-east-c1-n1 (frontend) to
		// eu-central-c2-n1 (backend, tcp/7000 allowed) through us-east's
		// gateway for c1. WireGuard roams on the first authenticated
		// packet from the new address.
		setDataplane(t, l, "nftables")
		r := roam(t, l, "us-east-c1-n1", "eu-central-c2-n1", "us-east")
		noGuardOutage = r.outage
		t.Logf("without the guard: %s moved %s → %s, traffic through %s back after an outage of %s (%d probes failed)",
			r.node, r.old, r.moved, r.gw, r.outage.Round(time.Millisecond), r.failed)
	})

	t.Run("RoamingPeerKeepsItsSession", func(t *testing.T) {
		setDataplane(t, l, "ebpf")
		// eu-central-c1-n1 (frontend) to us-east-c2-n1 (backend, tcp/7000
		// allowed): through eu-central's gateway for c1, whose guard
		// knows the node at its map's endpoint only.
		gw := designated(t, l, "eu-central", "c1")
		before := guardJSON(t, l, gw)
		r := roam(t, l, "eu-central-c1-n1", "us-east-c2-n1", "eu-central")
		if r.gw != gw {
			t.Fatalf("the designated gateway changed from %s to %s meanwhile", gw, r.gw)
		}
		after := guardJSON(t, l, gw)
		if !slices.ContainsFunc(after.Sources, func(s guardSource) bool { return s.Prefix == r.moved.String()+"/32" }) {
			t.Errorf("the guard on %s did not learn %s: sources %v", gw, r.moved, after.Sources)
		}
		delta := func(v string) uint64 { return after.Counters[v] - before.Counters[v] }
		if delta("wg_roam") == 0 {
			t.Errorf("no data from an unknown source passed the guard on %s (wg_roam)", gw)
		}
		t.Logf("with the guard: %s moved %s → %s, traffic through %s back after an outage of %s (%d probes failed; without the guard: %s); the guard on %s passed %d packets from unknown sources as a roaming peer's (wg_roam) and %d handshakes (wg_handshake), dropped %d over the limit (wg_ratelimited) and %d other messages (wg_unknown)",
			r.node, r.old, r.moved, gw, r.outage.Round(time.Millisecond), r.failed, noGuardOutage.Round(time.Millisecond),
			gw, delta("wg_roam"), delta("wg_handshake"), delta("wg_ratelimited"), delta("wg_unknown"))
		// The guard passes a roaming peer's data within the per-source
		// limit, so WireGuard moves the endpoint on its first packet; the
		// session must not wait for WireGuard's rekey timers (15 s).
		if r.outage > 3*time.Second {
			t.Errorf("with the guard the roaming node's traffic was back only after %s (without: %s), want ≤ 3 s", r.outage.Round(time.Millisecond), noGuardOutage.Round(time.Millisecond))
		}
	})
}

type roamed struct {
	node, gw   string
	old, moved netip.Addr
	outage     time.Duration
	failed     int
}

// roam moves a node's underlay address (a new lease, a NAT rebinding: the
// controller's map keeps the old endpoint) while it probes a host of
// another region every 100 ms through its region's designated gateway,
// and waits until 30 probes in a row succeed again (45 s at most); the
// gateway's WireGuard must have the node at its new address.
func roam(t *testing.T, l *lab.Lab, from, to, region string) roamed {
	t.Helper()
	node := host(t, l, from)
	r := roamed{node: from, gw: designated(t, l, region, node.Cluster), old: node.Underlay,
		moved: netip.AddrFrom4([4]byte{172, 16, byte(node.RegionIdx), byte(node.Index + 100)})}
	s, err := l.Stream(context.Background(), from, false, host(t, l, to).Overlay, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if !s.WaitOK(time.Time{}, 10, 20*time.Second) {
		t.Fatal("no traffic before the move")
	}
	start := time.Now()
	hostOut(t, l, from, "sh", "-c", fmt.Sprintf("ip addr del %s/24 dev eth0 && ip addr add %s/24 dev eth0", r.old, r.moved))
	if !s.WaitOK(start, 30, 45*time.Second) {
		t.Fatalf("the session of %s did not survive its move to %s", from, r.moved)
	}
	r.outage, r.failed = s.Outage(start)
	if out := hostOut(t, l, r.gw, "wg", "show", "sm0", "endpoints"); !strings.Contains(out, r.moved.String()+":51820") {
		t.Errorf("%s's WireGuard did not move %s's endpoint to %s:\n%s", r.gw, from, r.moved, out)
	}
	return r
}

// floodRate is the junk-handshake flood's rate (packets a second).
const floodRate = 50000

// A flooder sends junk WireGuard handshake initiations (type 1, 148 bytes,
// random otherwise: no valid MAC) from the lab's stranger to gateways'
// WireGuard ports, from a UDP socket with sendmmsg. STATEMESH_FLOOD_SENDER=
// kernel makes the flood in the kernel instead (pkttest.Generator: XDP
// live frames out of the stranger's wan0, one system call per batch; the
// switch's end of its link runs NAPI for them): sending and dropping a
// packet costs the machine 1.1-1.7 times less that way
// (pkttest.TestFloodSenderCost), but in this test it moved no ratio beyond
// the run-to-run spread (BENCHMARKS.md), so the socket, the way an
// attacker's machine sends, stays the default.
type flooder struct {
	ns     string
	src    netip.AddrPort
	srcMAC [6]byte
	socket bool
}

func newFlooder(t *testing.T, l *lab.Lab) *flooder {
	t.Helper()
	ns, addr, err := l.AddStranger()
	if err != nil {
		t.Fatal(err)
	}
	f := &flooder{ns: ns, src: netip.AddrPortFrom(addr, 40000), socket: os.Getenv("STATEMESH_FLOOD_SENDER") != "kernel"}
	pkttest.InNS(t, ns, func() error {
		ifc, err := net.InterfaceByName("wan0")
		if err == nil {
			f.srcMAC = [6]byte(ifc.HardwareAddr)
		}
		return err
	})
	if !f.socket {
		swNS, port := lab.StrangerPort()
		var napi link.Link
		pkttest.InNS(t, swNS, func() error {
			ifc, err := net.InterfaceByName(port)
			if err == nil {
				napi, err = pkttest.PassXDP(ifc.Index)
			}
			return err
		})
		t.Cleanup(func() { napi.Close() })
	}
	return f
}

// junkInitiation is a handshake initiation no peer made.
func junkInitiation() []byte {
	p := make([]byte, 148)
	rand.Read(p)
	p[0], p[1], p[2], p[3] = 1, 0, 0, 0
	return p
}

// flood floods target (a host's WAN address, MAC dstMAC) at rate a
// second, until stop is closed or max has passed; the channel gets the
// number sent.
func (f *flooder) flood(t *testing.T, target netip.AddrPort, dstMAC [6]byte, rate int, max time.Duration, stop <-chan struct{}) <-chan int {
	t.Helper()
	sent := make(chan int, 1)
	ready := make(chan error, 1)
	go func() {
		// The thread stays in ns and dies with the goroutine (not
		// unlocked: it never returns to the pool in the wrong namespace).
		runtime.LockOSThread()
		h, err := netns.GetFromName(f.ns)
		if err == nil {
			defer h.Close()
			err = netns.Set(h)
		}
		var send func(n int) (int, error)
		var done func()
		if err == nil {
			if f.socket {
				send, done, err = socketSender(target)
			} else {
				send, done, err = kernelSender(pkttest.Datagram(f.srcMAC, dstMAC, f.src, target, junkInitiation()))
			}
		}
		if err == nil {
			defer done()
		}
		ready <- err
		if err != nil {
			sent <- 0
			return
		}
		n := 0
		begin := time.Now()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				sent <- n
				return
			case <-tick.C:
			}
			el := time.Since(begin)
			if el > max {
				sent <- n
				return
			}
			k, _ := send(int(el.Seconds()*float64(rate)) - n) // a full buffer: the next tick sends them
			n += k
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("flood from %s: %v", f.ns, err)
	}
	return sent
}

// kernelSender sends frame out of wan0 with a pkttest.Generator.
func kernelSender(frame []byte) (send func(int) (int, error), done func(), err error) {
	ifc, err := net.InterfaceByName("wan0")
	if err != nil {
		return nil, nil, err
	}
	g, err := pkttest.NewGenerator(frame)
	if err != nil {
		return nil, nil, err
	}
	return func(n int) (int, error) {
		if err := g.Send(ifc.Index, n); err != nil {
			return 0, err
		}
		return max(n, 0), nil
	}, func() { g.Close() }, nil
}

// socketSender sends junk initiations to target from a UDP socket, in
// batches of sendmmsg.
func socketSender(target netip.AddrPort) (send func(int) (int, error), done func(), err error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
	if err != nil {
		return nil, nil, err
	}
	msgs := make([]ipv4.Message, 64)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{junkInitiation()}
	}
	var batch interface {
		WriteBatch([]ipv4.Message, int) (int, error)
	} = ipv4.NewPacketConn(c)
	if target.Addr().Is6() {
		batch = ipv6.NewPacketConn(c)
	}
	return func(n int) (int, error) {
		sent := 0
		for sent < n {
			k, err := batch.WriteBatch(msgs[:min(len(msgs), n-sent)], 0)
			if err != nil || k == 0 {
				return sent, err
			}
			sent += k
		}
		return sent, nil
	}, func() { c.Close() }, nil
}

// wanMAC is the MAC address of a host's wan0.
func wanMAC(t *testing.T, l *lab.Lab, h string) [6]byte {
	t.Helper()
	f := strings.Fields(hostOut(t, l, h, "ip", "-o", "link", "show", "wan0"))
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			if hw, err := net.ParseMAC(f[i+1]); err == nil && len(hw) == 6 {
				return [6]byte(hw)
			}
		}
	}
	t.Fatalf("no MAC address on %s's wan0", h)
	return [6]byte{}
}

// pairedMedian is the median of the per-round ratios a[i]/b[i] (each
// round measured both back to back: the machine's drift cancels).
func pairedMedian(a, b []float64) float64 {
	var r []float64
	for i := range min(len(a), len(b)) {
		r = append(r, a[i]/b[i])
	}
	if len(r) == 0 {
		return 0
	}
	slices.Sort(r)
	if len(r)%2 == 0 { // the mean of the middle two, not the upper one
		return (r[len(r)/2-1] + r[len(r)/2]) / 2
	}
	return r[len(r)/2]
}

// designated is a region's designated gateway for a cluster.
func designated(t *testing.T, l *lab.Lab, region, cluster string) string {
	t.Helper()
	regions, err := l.Admin.Regions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regions {
		if r.Name == region && r.Designation[cluster] != "" {
			return r.Designation[cluster]
		}
	}
	t.Fatalf("no designated gateway for %s/%s", region, cluster)
	return ""
}

type guardSource struct {
	Prefix  string   `json:"prefix"`
	Classes []string `json:"classes"`
}

// guardView is what `statemesh guard -o json` prints on a host.
type guardView struct {
	Sources  []guardSource     `json:"sources"`
	Local    []string          `json:"local"`
	Counters map[string]uint64 `json:"counters"`
	Firewall *struct {
		Counters map[string]uint64 `json:"counters"`
	} `json:"firewall"`
}

// guardJSON reads a host's guard and eBPF firewall from their pinned maps
// (the lab gives every host a bpf filesystem of its own).
func guardJSON(t *testing.T, l *lab.Lab, h string) guardView {
	t.Helper()
	var v guardView
	out := hostOut(t, l, h, binary, "guard", "--interface", "eth0", "-o", "json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("statemesh guard on %s: %v\n%s", h, err, out)
	}
	return v
}

// ebpfCounters sums the guard's (guard/VERDICT) and the eBPF firewall's
// (fw/VERDICT) counters over every host.
func ebpfCounters(t *testing.T, l *lab.Lab) map[string]uint64 {
	t.Helper()
	sum := map[string]uint64{}
	for _, h := range l.State.Hosts {
		v := guardJSON(t, l, h.Name)
		for k, n := range v.Counters {
			sum["guard/"+k] += n
		}
		if v.Firewall != nil {
			for k, n := range v.Firewall.Counters {
				sum["fw/"+k] += n
			}
		}
	}
	return sum
}

func counterDelta(before, after map[string]uint64) string {
	var out []string
	for k, n := range after {
		if d := n - before[k]; d > 0 {
			out = append(out, fmt.Sprintf("%s +%d", k, d))
		}
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// setDataplane applies the lab's spec with dataplane.firewall set to dp
// and waits until every host runs it.
func setDataplane(t *testing.T, l *lab.Lab, dp string) {
	t.Helper()
	ctx := context.Background()
	text, err := l.Admin.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(text, "\n")
	i := slices.IndexFunc(lines, func(s string) bool { return strings.HasPrefix(s, "  firewall: ") })
	if i < 1 || lines[i-1] != "dataplane:" {
		t.Fatalf("no dataplane.firewall in the lab's spec:\n%s", text)
	}
	lines[i] = "  firewall: " + dp
	if _, err := l.Admin.ApplySpec(ctx, []byte(strings.Join(lines, "\n"))); err != nil {
		t.Fatal(err)
	}
	waitDataplane(t, l, dp)
}

// waitDataplane waits until every host runs dp, as the kernel shows it
// (XDP programs on the underlay interfaces and a gateway's WAN, the eBPF
// firewall's pinned maps) and as the agents report it to the controller.
func waitDataplane(t *testing.T, l *lab.Lab, dp string) {
	t.Helper()
	ctx := context.Background()
	var why string
	took := waitForQuiet(60*time.Second, func() bool {
		nodes, err := l.Admin.Nodes(ctx, "", "")
		if err != nil {
			why = err.Error()
			return false
		}
		reported := map[string]string{}
		for _, n := range nodes {
			reported[n.Name] = n.Dataplane
		}
		for _, h := range l.State.Hosts {
			ifs := []string{"eth0"}
			if h.Role == "gateway" {
				ifs = append(ifs, "wan0")
			}
			st := reported[h.Name]
			want := "ebpf: XDP guard on " + strings.Join(ifs, ", ") + "; overlay policy in eBPF on sm0"
			if dp == "nftables" {
				want = "nftables: chosen"
			}
			if !strings.HasPrefix(st, want) {
				why = fmt.Sprintf("%s reports %q, want %q...", h.Name, st, want)
				return false
			}
			for _, ifc := range ifs {
				cmd, _ := l.State.HostCmd(ctx, h.Name, "ip", "link", "show", ifc)
				out, _ := cmd.CombinedOutput()
				if strings.Contains(string(out), "prog/xdp") != (dp == "ebpf") {
					why = fmt.Sprintf("%s %s: %s", h.Name, ifc, out)
					return false
				}
			}
			cmd, _ := l.State.HostCmd(ctx, h.Name, binary, "guard", "--interface", "eth0", "-o", "json")
			out, err := cmd.Output()
			var v guardView
			running := err == nil && json.Unmarshal(out, &v) == nil && v.Firewall != nil
			if running != (dp == "ebpf") {
				why = fmt.Sprintf("%s: statemesh guard says %s (%v)", h.Name, out, err)
				return false
			}
		}
		return true
	})
	if took < 0 {
		t.Fatalf("data plane %s not on every host within 60s: %s", dp, why)
	}
	t.Logf("data plane %s on every host (kernel and status reports) after %s", dp, took.Round(time.Millisecond))
}

// waitForQuiet polls cond every 250 ms until it holds (the time it took)
// or the timeout passes (-1).
func waitForQuiet(timeout time.Duration, cond func() bool) time.Duration {
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			return -1
		}
		time.Sleep(250 * time.Millisecond)
	}
	return time.Since(start)
}
