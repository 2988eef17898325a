package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/lab"
	"github.com/statemesh/statemesh/internal/testenv"
)

// outage streams pod to pod between eu-central/c1 and us-east/c1 both
// ways at 10 ms, runs event, and waits (up to wait) until both directions
// flow again; it returns the longest gap per direction. recover runs
// after wait whether or not traffic came back (e.g. restoring a link).
func outage(tb testing.TB, l *lab.Lab, event func(), wait time.Duration, recover func()) (fwd, back time.Duration, recovered bool) {
	ctx := context.Background()
	src, _ := l.State.Host("eu-central-c1-n1")
	dst, _ := l.State.Host("us-east-c1-n1")
	f, err := l.Stream(ctx, src.Name, true, dst.PodAddr(), 10*time.Millisecond)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Stop()
	r, err := l.Stream(ctx, dst.Name, true, src.PodAddr(), 10*time.Millisecond)
	if err != nil {
		tb.Fatal(err)
	}
	defer r.Stop()
	if !f.WaitOK(time.Time{}, 20, 20*time.Second) || !r.WaitOK(time.Time{}, 20, 20*time.Second) {
		tb.Fatal("traffic not flowing before the event")
	}
	start := time.Now()
	event()
	recovered = f.WaitOK(start, 50, wait) && r.WaitOK(start, 50, wait)
	if recover != nil {
		recover()
	}
	if !f.WaitOK(start, 50, 30*time.Second) || !r.WaitOK(start, 50, 30*time.Second) {
		tb.Fatal("traffic did not come back within 30 s")
	}
	fwd, _ = f.Outage(start)
	back, _ = r.Outage(start)
	return fwd, back, recovered
}

// BenchmarkFailoverModes measures, in one run, the outage between pods of
// two regions when the designated gateway of the source cluster dies or
// loses its WAN link, in baseline mode (the controller re-designates on
// missed heartbeats) and BIRD mode (BGP with BFD over backbone links), and
// how long a returning gateway takes to be back in service. Run with
// -benchtime=1x; it prints a table.
func BenchmarkFailoverModes(b *testing.B) {
	testenv.RequireBinary(b, "bird")
	type row struct {
		mode, event string
		fwd, back   []float64
		note        string
	}
	var rows []row
	const cutWindow = 5 * time.Second
	for _, mode := range []string{"baseline", "bird"} {
		l := upLabB(b, lab.Config{BGP: mode == "bird", BFDInterval: 100 * time.Millisecond, GatewayTimeout: 1500 * time.Millisecond,
			Nodes: 1, WeakNodes: 0})
		ctx := context.Background()
		victim := func() string {
			regions, err := l.Admin.Regions(ctx)
			if err != nil {
				b.Fatal(err)
			}
			return regions[0].Designation["c1"]
		}
		kill := row{mode: mode, event: "gateway killed"}
		cut := row{mode: mode, event: "WAN link cut"}
		var back []float64
		for range 3 {
			v := victim()
			f, r, _ := outage(b, l, func() { l.KillHost(v) }, 30*time.Second, nil)
			kill.fwd, kill.back = append(kill.fwd, f.Seconds()), append(kill.back, r.Seconds())
			started := time.Now()
			l.StartAgent(v)
			for time.Since(started) < 60*time.Second {
				n, err := l.Admin.Node(ctx, v)
				ok := err == nil && n.Healthy != nil && *n.Healthy
				if ok && mode == "bird" {
					out, _ := l.Birdc(ctx, v, "show", "protocols")
					ok = backboneEstablished(out) == backboneLinks(l)
				}
				if ok {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			back = append(back, time.Since(started).Seconds())
			time.Sleep(2 * time.Second)

			v = victim()
			f, r, recovered := outage(b, l, func() { l.WANLink(v, 0, false) }, cutWindow,
				func() { l.WANLink(v, l.State.Config.WANMTU, true) })
			cut.fwd, cut.back = append(cut.fwd, f.Seconds()), append(cut.back, r.Seconds())
			if !recovered {
				cut.note = fmt.Sprintf("no failover: traffic stopped until the link returned (%s window; the gateway still heartbeats to the controller)", cutWindow)
			}
			time.Sleep(2 * time.Second)
		}
		kill.note = fmt.Sprintf("returning gateway back in service in %.2f s (median; bird: BGP sessions Established)", median(back))
		rows = append(rows, kill, cut)
		b.ReportMetric(median(kill.fwd), mode+"-kill-fwd-s")
		b.ReportMetric(median(cut.fwd), mode+"-cut-fwd-s")
		lab.Down(l.State.Config.Dir, nil)
		lab.ForceClean(nil)
	}
	var t strings.Builder
	fmt.Fprintf(&t, "%-9s %-15s %-22s %-22s %s\n", "MODE", "EVENT", "OUTAGE FWD (median, s)", "OUTAGE BACK (median, s)", "NOTE")
	for _, r := range rows {
		fmt.Fprintf(&t, "%-9s %-15s %-22s %-22s %s\n", r.mode, r.event, fmt.Sprintf("%.2f %v", median(r.fwd), round2(r.fwd)), fmt.Sprintf("%.2f %v", median(r.back), round2(r.back)), r.note)
	}
	fmt.Fprintf(&t, "WireGuard alone (no StateMesh failover): a dead peer is noticed after ~15 s (REKEY_TIMEOUT 5 s × 3 handshake attempts) and nothing reroutes.\n")
	b.Log("\n" + t.String())
}

func round2(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(int(x*100+0.5)) / 100
	}
	return out
}

// BenchmarkFailoverRegions measures failover at several lab sizes (issue
// 20): for each size in STATEMESH_FAILOVER_REGIONS (default "2,10,20"
// regions; 1 cluster of 1 node and 2 gateways per region), in baseline
// and BIRD mode (peersPerRegion STATEMESH_FAILOVER_PEERS, default 1: with
// two gateways per region 2 is a full mesh), the lab's bring-up time, then
// `reps` times (STATEMESH_FAILOVER_REPS, default 2) the outage between
// eu-central/c1 and us-east/c1 pods when eu-central/c1's designated
// gateway is killed and when its WAN link is cut, and how long the killed
// gateway takes to be back in service (BIRD: every backbone session
// Established again, the re-convergence). BFD runs at
// STATEMESH_FAILOVER_BFD (default 100ms) × 3. Minutes per size: opt-in
// (-run '^$' -bench BenchmarkFailoverRegions -benchtime=1x), not in CI.
func BenchmarkFailoverRegions(b *testing.B) {
	testenv.RequireBinary(b, "bird")
	sizes := []int{2, 10, 20}
	if s := os.Getenv("STATEMESH_FAILOVER_REGIONS"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				b.Fatalf("STATEMESH_FAILOVER_REGIONS: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	reps := 2
	if s := os.Getenv("STATEMESH_FAILOVER_REPS"); s != "" {
		reps, _ = strconv.Atoi(s)
	}
	peers := 1 // a bounded backbone (with 2 gateways per region, 2 is a full mesh)
	if s := os.Getenv("STATEMESH_FAILOVER_PEERS"); s != "" {
		peers, _ = strconv.Atoi(s)
	}
	upTimeout := 20 * time.Minute
	if s := os.Getenv("STATEMESH_FAILOVER_UP_TIMEOUT"); s != "" {
		upTimeout, _ = time.ParseDuration(s)
	}
	bfd := 100 * time.Millisecond
	if s := os.Getenv("STATEMESH_FAILOVER_BFD"); s != "" {
		var err error
		if bfd, err = time.ParseDuration(s); err != nil {
			b.Fatalf("STATEMESH_FAILOVER_BFD: %v", err)
		}
	}
	modes := []string{"baseline", "bird"}
	if s := os.Getenv("STATEMESH_FAILOVER_MODES"); s != "" {
		modes = strings.Split(s, ",")
	}
	var t strings.Builder
	fmt.Fprintf(&t, "%-8s %-9s %-8s %-20s %-20s %-20s %-20s %s\n", "REGIONS", "MODE", "UP (s)", "KILL FWD (s)", "KILL BACK (s)", "CUT FWD (s)", "CUT BACK (s)", "KILLED GATEWAY BACK IN SERVICE (s)")
	for _, regions := range sizes {
		for _, mode := range modes {
			cfg := lab.Config{Regions: regions, Clusters: 1, Nodes: 1, Gateways: 2, BGP: mode == "bird", BFDInterval: bfd,
				GatewayTimeout: 1500 * time.Millisecond, WeakNodes: 0}
			if cfg.BGP {
				cfg.PeersPerRegion = peers
			}
			lab.ForceClean(nil)
			cfg.Dir, cfg.Binary, cfg.Pods = b.TempDir(), binary, true
			ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
			availBefore := memAvailableMiB()
			start := time.Now()
			l, err := lab.Up(ctx, cfg, nil)
			cancel()
			up := time.Since(start)
			if err != nil {
				lab.Down(cfg.Dir, nil)
				b.Fatalf("%d regions, %s: %v", regions, mode, err)
			}
			links := 0
			if cfg.BGP {
				links = backboneLinks(l)
			}
			rss, pss, procs := labMemory()
			b.Logf("%d regions, %s: up in %s; %d processes in the lab's namespaces: RSS %.0f MiB, PSS %.0f MiB; MemAvailable %.0f → %.0f MiB (−%.0f); %d backbone links per gateway; load %s",
				regions, mode, up.Round(100*time.Millisecond), procs, rss, pss, availBefore, memAvailableMiB(), availBefore-memAvailableMiB(), links, loadavg())
			victim := func() string {
				regions, err := l.Admin.Regions(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				for _, r := range regions {
					if r.Name == "eu-central" {
						return r.Designation["c1"]
					}
				}
				b.Fatal("no eu-central")
				return ""
			}
			var kf, kb, cf, cb, back []float64
			for range reps {
				v := victim()
				f, r, _ := outage(b, l, func() { l.KillHost(v) }, 30*time.Second, nil)
				kf, kb = append(kf, f.Seconds()), append(kb, r.Seconds())
				started := time.Now()
				l.StartAgent(v)
				for time.Since(started) < 120*time.Second {
					n, err := l.Admin.Node(context.Background(), v)
					ok := err == nil && n.Healthy != nil && *n.Healthy
					if ok && mode == "bird" {
						out, _ := l.Birdc(context.Background(), v, "show", "protocols")
						ok = backboneEstablished(out) == links
					}
					if ok {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				back = append(back, time.Since(started).Seconds())
				time.Sleep(2 * time.Second)
				v = victim()
				f, r, _ = outage(b, l, func() { l.WANLink(v, 0, false) }, 10*time.Second,
					func() { l.WANLink(v, l.State.Config.WANMTU, true) })
				cf, cb = append(cf, f.Seconds()), append(cb, r.Seconds())
				time.Sleep(3 * time.Second)
			}
			fmt.Fprintf(&t, "%-8d %-9s %-8.1f %-20s %-20s %-20s %-20s %.2f %v\n", regions, mode, up.Seconds(),
				fmt.Sprintf("%.2f %v", median(kf), round2(kf)), fmt.Sprintf("%.2f %v", median(kb), round2(kb)),
				fmt.Sprintf("%.2f %v", median(cf), round2(cf)), fmt.Sprintf("%.2f %v", median(cb), round2(cb)), median(back), round2(back))
			b.Logf("%d regions, %s: up in %s; kill %v/%v, cut %v/%v, back %v", regions, mode, up.Round(time.Second), round2(kf), round2(kb), round2(cf), round2(cb), round2(back))
			lab.Down(cfg.Dir, nil)
			lab.ForceClean(nil)
		}
	}
	b.Log("\n" + t.String())
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// labMemory sums the resident and proportional memory (smaps_rollup Rss,
// Pss) of every process in the lab's network namespaces (/run/netns: the
// hosts, pods and switches) and in this process's own (the controller),
// and counts them.
func labMemory() (rssMiB, pssMiB float64, procs int) {
	netns := map[uint64]bool{}
	ino := func(path string) (uint64, bool) {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			return 0, false
		}
		return st.Ino, true
	}
	if i, ok := ino("/proc/self/ns/net"); ok {
		netns[i] = true
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if i, ok := ino("/run/netns/" + e.Name()); ok {
				netns[i] = true
			}
		}
	}
	self := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if i, ok := ino("/proc/" + e.Name() + "/ns/net"); !ok || !netns[i] {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/smaps_rollup")
		if err != nil {
			continue
		}
		procs++
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				switch f[0] {
				case "Rss:":
					rssMiB += kb / 1024
				case "Pss:":
					pssMiB += kb / 1024
				}
			}
		}
	}
	return rssMiB, pssMiB, procs
}

// memAvailableMiB is /proc/meminfo's MemAvailable.
func memAvailableMiB() float64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}
