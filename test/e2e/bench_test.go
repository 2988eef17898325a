package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/lab"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

func upLabB(b *testing.B, cfg lab.Config) *lab.Lab {
	testenv.RequireRoot(b)
	if err := lab.CheckPrerequisites(); err != nil {
		b.Skip(err)
	}
	lab.ForceClean(nil)
	cfg.Dir, cfg.Binary, cfg.Pods = b.TempDir(), binary, true
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, cfg, nil)
	b.Cleanup(func() {
		lab.Down(cfg.Dir, nil)
		lab.ForceClean(nil)
	})
	if err != nil {
		b.Fatal(err)
	}
	return l
}

func hostRun(tb testing.TB, l *lab.Lab, host string, argv ...string) string {
	tb.Helper()
	cmd, err := l.State.HostCmd(context.Background(), host, argv...)
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("%s on %s: %v\n%s", strings.Join(argv, " "), host, err, out)
	}
	return string(out)
}

// iperf runs a 4-second iperf3 TCP test from a namespace (argv prefix) to
// addr and returns Gbit/s received.
func iperf(tb testing.TB, pre []string, addr string) float64 {
	argv := append(append([]string{}, pre...), "iperf3", "-c", addr, "-t", "4", "-J")
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		tb.Fatalf("iperf3 to %s: %v\n%s", addr, err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		tb.Fatal(err)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkThroughput compares, in one run on the same namespaces:
// StateMesh node→node and pod→pod, plain wireguard-go configured by hand
// with wg(8) and ip(8), and the raw veth underlay — for each address
// family shape: IPv4 in IPv4, IPv6 in IPv4 (--pods ipv6) and IPv6 in
// IPv6 (--pods ipv6 --underlay ipv6), the plain tunnel carrying the same
// inner family over the same underlay. Run with -benchtime=1x; one shape:
// -bench 'BenchmarkThroughput/ipv6-in-ipv6'.
func BenchmarkThroughput(b *testing.B) {
	testenv.RequireBinary(b, "iperf3")
	for _, shape := range []struct {
		name           string
		pods, underlay string
		inner6         bool
	}{
		{"ipv4-in-ipv4", lab.FamilyIPv4, lab.FamilyIPv4, false},
		{"ipv6-in-ipv4", lab.FamilyIPv6, lab.FamilyIPv4, true},
		{"ipv6-in-ipv6", lab.FamilyIPv6, lab.FamilyIPv6, true},
	} {
		b.Run(shape.name, func(b *testing.B) {
			throughput(b, lab.Config{Regions: 1, Clusters: 1, Nodes: 2, Gateways: 2, UnderlayAllow: []string{"tcp/5201", "udp/51999"},
				PodFamily: shape.pods, UnderlayFamily: shape.underlay}, shape.inner6)
		})
	}
}

func throughput(b *testing.B, cfg lab.Config, inner6 bool) {
	l := upLabB(b, cfg)
	a, _ := l.State.Host("eu-central-c1-n1")
	z, _ := l.State.Host("eu-central-c1-n2")
	holder := func(h string) []string {
		return []string{"nsenter", "-t", fmt.Sprint(l.State.Holders[h]), "-n", "-m", "--"}
	}
	podPre := func(h *lab.Host) []string { return []string{"ip", "netns", "exec", h.PodNS()} }

	// iperf3 servers on the node and in its pod.
	for _, pre := range [][]string{holder(z.Name), podPre(z)} {
		srv := exec.Command(append(append([]string{}, pre...), "iperf3", "-s")[0], append(append([]string{}, pre...), "iperf3", "-s")[1:]...)
		if err := srv.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	}

	// Plain wireguard-go between the same two hosts, by hand.
	dir := b.TempDir()
	keys := map[string]netmap.Key{}
	// The same MTU as StateMesh plans: WireGuard costs 60 bytes over IPv4,
	// 80 over IPv6.
	mtu := "1440"
	if cfg.Underlay6() {
		mtu = "1420"
	}
	// The hand-made tunnel's addresses, in the inner family measured.
	plainAddr := func(i int) string {
		if inner6 {
			return fmt.Sprintf("fd99::%d/64", i)
		}
		return fmt.Sprintf("10.99.0.%d/24", i)
	}
	plainHost := func(i int) string {
		if inner6 {
			return fmt.Sprintf("fd99::%d/128", i)
		}
		return fmt.Sprintf("10.99.0.%d/32", i)
	}
	for i, h := range []*lab.Host{a, z} {
		k, _ := netmap.GeneratePrivateKey()
		keys[h.Name] = k
		kf := filepath.Join(dir, h.Name+".key")
		os.WriteFile(kf, []byte(k.String()), 0o600)
		// Started the way the agent starts its own: same binary, its own
		// session, output to a file.
		logf, _ := os.Create(filepath.Join(dir, h.Name+"-plain.log"))
		daemon := exec.Command("nsenter", "-t", fmt.Sprint(l.State.Holders[h.Name]), "-n", "-m", "--", binary, "wireguard-go", "wgplain")
		daemon.Env = append(os.Environ(), "STATEMESH_WG_MTU="+mtu)
		daemon.Stdout, daemon.Stderr = logf, logf
		daemon.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := daemon.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { daemon.Process.Kill(); daemon.Wait() })
		deadline := time.Now().Add(10 * time.Second)
		for {
			cmd, _ := l.State.HostCmd(context.Background(), h.Name, "wg", "show", "wgplain")
			if cmd.Run() == nil {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("plain wireguard-go did not start")
			}
			time.Sleep(50 * time.Millisecond)
		}
		hostRun(b, l, h.Name, "wg", "set", "wgplain", "private-key", kf, "listen-port", "51999")
		hostRun(b, l, h.Name, "ip", "addr", "add", plainAddr(i+1), "dev", "wgplain")
		hostRun(b, l, h.Name, "ip", "link", "set", "wgplain", "mtu", mtu, "up")
	}
	hostRun(b, l, a.Name, "wg", "set", "wgplain", "peer", keys[z.Name].PublicKey().String(), "endpoint", netip.AddrPortFrom(z.Underlay, 51999).String(), "allowed-ips", plainHost(2))
	hostRun(b, l, z.Name, "wg", "set", "wgplain", "peer", keys[a.Name].PublicKey().String(), "endpoint", netip.AddrPortFrom(a.Underlay, 51999).String(), "allowed-ips", plainHost(1))
	// The targets in the family measured.
	smDst, podDst, plainDst := z.Overlay.String(), z.PodIP.String(), "10.99.0.2"
	if inner6 {
		smDst, podDst, plainDst = z.Overlay6.String(), z.PodIP6.String(), "fd99::2"
	}

	var sm, pod, plain, raw []float64
	// Warm up both tunnels, then alternate which goes first.
	iperf(b, holder(a.Name), smDst)
	iperf(b, holder(a.Name), plainDst)
	b.ResetTimer()
	for round := range 7 {
		if round%2 == 0 {
			sm = append(sm, iperf(b, holder(a.Name), smDst))
			plain = append(plain, iperf(b, holder(a.Name), plainDst))
		} else {
			plain = append(plain, iperf(b, holder(a.Name), plainDst))
			sm = append(sm, iperf(b, holder(a.Name), smDst))
		}
		pod = append(pod, iperf(b, podPre(a), podDst))
		if round < 2 {
			raw = append(raw, iperf(b, holder(a.Name), z.Underlay.String()))
		}
	}
	b.StopTimer()
	msm, mpod, mplain, mraw := median(sm), median(pod), median(plain), median(raw)
	// Each round measured both tunnels back to back: the median of the
	// per-round ratios cancels most of the machine's drift.
	var paired []float64
	for i := range sm {
		paired = append(paired, sm[i]/plain[i])
	}
	b.ReportMetric(median(paired), "paired-statemesh/plain")
	b.ReportMetric(msm, "statemesh-Gbps")
	b.ReportMetric(mpod, "pod-Gbps")
	b.ReportMetric(mplain, "plain-wg-Gbps")
	b.ReportMetric(mraw, "veth-Gbps")
	b.ReportMetric(msm/mplain, "statemesh/plain")
	b.ReportMetric(mpod/mplain, "pod/plain")
	b.Logf("node→node over StateMesh %.2f Gbit/s, pod→pod %.2f, plain wireguard-go %.2f, raw veth %.2f; StateMesh/plain %.3f, pod/plain %.3f (medians of 7; paired ratio median %.3f; all: %v %v %v %v)",
		msm, mpod, mplain, mraw, msm/mplain, mpod/mplain, median(paired), sm, pod, plain, raw)
}

// BenchmarkGatewayFailover kills the designated gateway of a cluster while
// pod traffic flows to another region, and reports the outage both ways
// (median over 3 kills). Run with -benchtime=1x.
func BenchmarkGatewayFailover(b *testing.B) {
	l := upLabB(b, lab.Config{GatewayTimeout: 1500 * time.Millisecond})
	ctx := context.Background()
	src, _ := l.State.Host("eu-central-c1-n1")
	dst, _ := l.State.Host("us-east-c1-n1")
	var fwd, back []float64
	for range 3 {
		regions, err := l.Admin.Regions(ctx)
		if err != nil {
			b.Fatal(err)
		}
		victim := regions[0].Designation["c1"]
		f, _ := l.Stream(ctx, src.Name, true, dst.PodIP, 10*time.Millisecond)
		r, _ := l.Stream(ctx, dst.Name, true, src.PodIP, 10*time.Millisecond)
		if !f.WaitOK(time.Time{}, 20, 20*time.Second) || !r.WaitOK(time.Time{}, 20, 20*time.Second) {
			b.Fatal("traffic not flowing")
		}
		killed := time.Now()
		l.KillHost(victim)
		if !f.WaitOK(killed, 50, 30*time.Second) || !r.WaitOK(killed, 50, 30*time.Second) {
			b.Fatal("no recovery in 30s")
		}
		of, _ := f.Outage(killed)
		ob, _ := r.Outage(killed)
		f.Stop()
		r.Stop()
		fwd = append(fwd, of.Seconds())
		back = append(back, ob.Seconds())
		l.StartAgent(victim)
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			n, err := l.Admin.Node(ctx, victim)
			if err == nil && n.Healthy != nil && *n.Healthy {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(2 * time.Second)
	}
	b.ReportMetric(median(fwd), "outage-fwd-s")
	b.ReportMetric(median(back), "outage-back-s")
	b.Logf("baseline failover (heartbeat timeout 1.5s, heartbeats every 1s): outages forward %v, back %v", fwd, back)
}
