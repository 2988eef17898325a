package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/lab"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/testenv"
)

// upLabWith starts a lab with cfg (Dir, Binary and Pods set here) and
// tears it down when the test ends.
func upLabWith(t *testing.T, cfg lab.Config) *lab.Lab {
	testenv.RequireRoot(t)
	if err := lab.CheckPrerequisites(); err != nil {
		if testenv.InCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	lab.ForceClean(nil)
	cfg.Dir, cfg.Binary, cfg.Pods = t.TempDir(), binary, true
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, cfg, logw{t})
	t.Cleanup(func() {
		if keep := os.Getenv("STATEMESH_E2E_LOGS"); keep != "" {
			os.CopyFS(filepath.Join(keep, t.Name()), os.DirFS(cfg.Dir))
		}
		lab.Down(cfg.Dir, nil)
		lab.ForceClean(nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

var protoLine = regexp.MustCompile(`(?m)^(bb_\S+)\s+BGP\s+\S+\s+(\S+)\s+\S+\s*(\S*)`)

// backboneEstablished counts a gateway's backbone BGP sessions (bb_*)
// that are up and Established in `birdc show protocols` (eu-central's
// gateways also have a session with the lab's operator router).
func backboneEstablished(out string) int {
	n := 0
	for _, m := range protoLine.FindAllStringSubmatch(out, -1) {
		if m[2] == "up" && m[3] == "Established" {
			n++
		}
	}
	return n
}

// backboneBFDUp counts BFD sessions Up on backbone links (smbb*).
func backboneBFDUp(out string) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && strings.HasPrefix(f[1], "smbb") && f[2] == "Up" {
			n++
		}
	}
	return n
}

// backboneLinks is how many backbone links (BGP sessions) each gateway of
// a lab has: every other gateway of its region, and min(K, gateways) of
// each other region (the lab's regions are all the same size).
func backboneLinks(l *lab.Lab) int {
	c := l.State.Config
	k := c.PeersPerRegion
	if k == 0 {
		k = spec.DefaultPeersPerRegion
	}
	return c.Gateways - 1 + (c.Regions-1)*min(k, c.Gateways)
}

// TestLabBGP runs the lab in BIRD mode on a backbone that is not a full
// mesh (issue 20): peersPerRegion 1, so each of the four gateways links
// its region's other gateway and one gateway of the other region (2
// links, not 3), and traffic between designated gateways without a link
// of their own crosses an iBGP hop; BGP with BFD on each link, failover
// within a second. TestLabBGPIPv6 runs the default (2: with two gateways
// per region a full mesh).
func TestLabBGP(t *testing.T) {
	testenv.RequireBinary(t, "bird")
	l := upLabWith(t, lab.Config{BGP: true, BFDInterval: 100 * time.Millisecond, GatewayTimeout: 1500 * time.Millisecond,
		Nodes: 1, Clients: 0, WeakNodes: 0, PeersPerRegion: 1})
	t.Run("BackboneIsNotAFullMesh", func(t *testing.T) {
		testBoundedBackbone(t, l, false)
	})
	testBGPLab(t, l)
	// Last: it may kill a gateway to get an unlinked pair.
	t.Run("UnlinkedDesignatedGatewaysCarryTraffic", func(t *testing.T) {
		testBoundedBackbone(t, l, true)
	})
}

// testBoundedBackbone checks that each gateway has exactly the planned
// links (fewer than a full mesh's) as interfaces and that the links pair
// up; with relay, that the lab's matrix is as the policy expects while the
// designated gateways of eu-central/c1 and us-east/c1 have no link of
// their own (traffic between them crosses an iBGP hop).
func testBoundedBackbone(t *testing.T, l *lab.Lab, relay bool) {
	ctx := context.Background()
	var gateways []string
	for _, h := range l.State.Hosts {
		if h.Role == "gateway" {
			gateways = append(gateways, h.Name)
		}
	}
	links := backboneLinks(l)
	if links >= len(gateways)-1 {
		t.Fatalf("the lab's backbone is a full mesh: %d links per gateway, %d gateways", links, len(gateways))
	}
	peers := map[string][]string{}
	for _, g := range gateways {
		out := hostOut(t, l, g, "wg", "show", "all", "endpoints")
		n := strings.Count(hostOut(t, l, g, "sh", "-c", "ip -o link show | grep ': smbb' || true"), "smbb")
		if n != links {
			t.Errorf("%s has %d backbone interfaces, want %d (a full mesh would have %d)", g, n, links, len(gateways)-1)
		}
		// Loose reverse-path filtering: a reply may come over another link.
		if rp := hostOut(t, l, g, "sh", "-c", "cat /proc/sys/net/ipv4/conf/smbb*/rp_filter | sort -u"); strings.TrimSpace(rp) != "2" {
			t.Errorf("%s: rp_filter of the backbone links %q, want 2 (loose)", g, rp)
		}
		for _, h := range l.State.Hosts {
			if h.Role == "gateway" && h.Name != g && (strings.Contains(out, h.WAN.String()+":") || strings.Contains(out, h.Underlay.String()+":")) {
				peers[g] = append(peers[g], h.Name)
			}
		}
	}
	for g, ps := range peers {
		for _, p := range ps {
			if !slices.Contains(peers[p], g) {
				t.Errorf("%s links to %s, not back (%v)", g, p, peers[p])
			}
		}
	}
	if !relay {
		return
	}
	// The streams' pair, eu-central/c1 and us-east/c1: their designated
	// gateways are linked or not depending on the gateways' numbers (the
	// order they enrolled in). When they are, killing eu-central's moves
	// c1 to its other gateway, which with one link per region is linked to
	// us-east's other gateway only: then they are not.
	designated := func() (string, string) {
		regions, err := l.Admin.Regions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ga, gb string
		for _, r := range regions {
			switch r.Name {
			case "eu-central":
				ga = r.Designation["c1"]
			case "us-east":
				gb = r.Designation["c1"]
			}
		}
		return ga, gb
	}
	ga, gb := designated()
	killed := ""
	if slices.Contains(peers[ga], gb) {
		killed = ga
		if err := l.KillHost(ga); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "eu-central/c1 off "+ga, 20*time.Second, func() bool { a, _ := designated(); return a != ga })
		ga, gb = designated()
	}
	if slices.Contains(peers[ga], gb) {
		t.Fatalf("eu-central/c1 (designated %s) and us-east/c1 (designated %s) are linked (links %v): nothing crosses an iBGP hop", ga, gb, peers)
	}
	m := check(t, l)
	t.Logf("eu-central/c1 (designated %s) and us-east/c1 (designated %s) have no link of their own (links %v; killed %q to get there): all %d probes as the policy expects",
		ga, gb, peers, killed, len(m.Results))
	if killed != "" {
		if err := l.StartAgent(killed); err != nil {
			t.Fatal(err)
		}
		waitFor(t, killed+" back with its sessions", 30*time.Second, func() bool {
			out, _ := l.Birdc(ctx, killed, "show", "protocols")
			n, err := l.Admin.Node(ctx, killed)
			return err == nil && n.Healthy != nil && *n.Healthy && backboneEstablished(out) == links
		})
	}
}

// TestLabBGPIPv6 runs the lab of examples/lab/ipv6-bgp.yaml (IPv6 pods
// over an IPv6 underlay and WAN, BIRD mode) with the lab's policy and an
// operator client (issue 15): the matrix over both families equals the
// policy, denied pairs included, then every BIRD-mode assertion of
// TestLabBGP, failover within a second included.
func TestLabBGPIPv6(t *testing.T) {
	testenv.RequireBinary(t, "bird")
	data, err := os.ReadFile("../../examples/lab/ipv6-bgp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := lab.Config{GatewayTimeout: 1500 * time.Millisecond, Policy: true, Clients: 1}
	if err := lab.ParseConfig(data, &cfg); err != nil {
		t.Fatal(err)
	}
	if !cfg.BGP || cfg.PodFamily != lab.FamilyIPv6 || cfg.UnderlayFamily != lab.FamilyIPv6 {
		t.Fatalf("examples/lab/ipv6-bgp.yaml is not the IPv6 BIRD shape: %+v", cfg)
	}
	l := upLabWith(t, cfg)

	t.Run("MeasuredMatrixEqualsPolicyOverIPv6", func(t *testing.T) {
		m := check(t, l)
		count := probeCounts(m)
		t.Logf("probes by family, kind and verdict: %v", count)
		for _, k := range []string{"IPv4 node allowed", "IPv4 node denied", "IPv6 node allowed", "IPv6 node denied",
			"IPv6 pod allowed", "IPv6 pod denied", "IPv6 client allowed", "IPv6 client denied"} {
			if count[k] == 0 {
				t.Errorf("no %s probe: the matrix would not prove it", k)
			}
		}
		if count["IPv4 pod allowed"]+count["IPv4 pod denied"] != 0 {
			t.Errorf("IPv4 pod probes in an IPv6-pod lab: %v", count)
		}
		// The underlay is IPv6: every WireGuard endpoint is [addr]:port.
		out := hostOut(t, l, "eu-central-gw1", "wg", "show", "all", "endpoints")
		if !strings.Contains(out, "]:51820") || regexp.MustCompile(`\s\d+\.\d+\.\d+\.\d+:\d+`).MatchString(out) {
			t.Errorf("eu-central-gw1's endpoints are not all IPv6:\n%s", out)
		}
	})

	testBGPLab(t, l)
}

// testBGPLab is TestLabBGP's assertions on a BIRD-mode lab of any shape.
func testBGPLab(t *testing.T, l *lab.Lab) {
	ctx := context.Background()
	var gateways []string
	for _, h := range l.State.Hosts {
		if h.Role == "gateway" {
			gateways = append(gateways, h.Name)
		}
	}
	// Each gateway's backbone links (= BGP sessions, BFD sessions).
	links := backboneLinks(l)

	t.Run("SessionsEstablishedWithBFD", func(t *testing.T) {
		for _, g := range gateways {
			var out, bfd string
			ok := false
			deadline := time.Now().Add(20 * time.Second)
			for !ok && time.Now().Before(deadline) {
				out, _ = l.Birdc(ctx, g, "show", "protocols")
				bfd, _ = l.Birdc(ctx, g, "show", "bfd", "sessions")
				ok = backboneEstablished(out) == links && backboneBFDUp(bfd) == links
				if !ok {
					time.Sleep(200 * time.Millisecond)
				}
			}
			if !ok {
				t.Errorf("%s: want %d BGP sessions Established with BFD Up:\n%s\n%s", g, links, out, bfd)
			}
		}
		// The other region's cluster prefixes, learned through BIRD.
		routes := hostOut(t, l, "eu-central-gw1", "ip", "route")
		for _, c := range []string{"c1", "c2"} {
			pc, _ := l.Admin.Clusters(ctx)
			for _, cl := range pc {
				if cl.Region == "us-east" && cl.Name == c && !strings.Contains(routes, cl.OverlayIPv4+" via 169.254.64.") {
					t.Errorf("eu-central-gw1 has no BIRD route to us-east/%s (%s):\n%s", c, cl.OverlayIPv4, routes)
				}
			}
		}
		if !strings.Contains(routes, "proto bird") {
			t.Errorf("no proto bird routes:\n%s", routes)
		}
		if l.State.Config.Pods6() {
			// The IPv6 channel: the other region's IPv6 pod ranges, through
			// the backbone links (extended next hop).
			routes6 := hostOut(t, l, "eu-central-gw1", "ip", "-6", "route", "show", "proto", "bird")
			pc, _ := l.Admin.Clusters(ctx)
			for _, cl := range pc {
				if cl.Region == "us-east" && (cl.PodIPv6 == "" || !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(cl.PodIPv6)+` .*dev smbb`).MatchString(routes6)) {
					t.Errorf("eu-central-gw1 has no BIRD route to us-east/%s's IPv6 pods (%q) over a backbone link:\n%s", cl.Name, cl.PodIPv6, routes6)
				}
			}
			t.Logf("eu-central-gw1 (IPv6):\n%s", routes6)
		}
		st, err := l.Admin.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range st.Regions {
			for _, g := range r.Gateways {
				backbone := 0
				if g.Routing != nil {
					for _, s := range g.Routing.Sessions {
						if strings.HasPrefix(s.Name, "bb_") {
							backbone++
						}
					}
				}
				if g.Routing == nil || g.Routing.BIRD != "running" || backbone != links {
					t.Errorf("status of %s: %+v", g.Name, g.Routing)
				}
			}
		}
		t.Logf("eu-central-gw1:\n%s", routes)
		// statemesh render bird prints exactly what the agent installed.
		out, err := exec.Command(binary, "render", "bird", "--node", "eu-central-gw1", "--check", "--config", l.State.AdminConfig).Output()
		installed, _ := os.ReadFile(filepath.Join(l.State.Config.Dir, "hosts", "eu-central-gw1", "bird", "bird.conf"))
		if err != nil || string(out) != string(installed) {
			t.Errorf("render bird (%v) differs from the installed bird.conf:\n%s\n---\n%s", err, out, installed)
		}
		if out, err := exec.Command(binary, "render", "bird", "--node", "eu-central-c1-n1", "--config", l.State.AdminConfig).CombinedOutput(); err == nil || !strings.Contains(string(out), "not a gateway of a BIRD-mode region") {
			t.Errorf("render bird for a node: %v %s", err, out)
		}
	})

	t.Run("OperatorRouterLearnsTheRegion", func(t *testing.T) {
		// regions[0].bgp.externalPeers: the lab's operator router (its own
		// BIRD on eu-central's underlay) peers with both eu-central
		// gateways, BFD up, and learns exactly eu-central's planned
		// prefixes: what the other region learns from it, nothing else.
		var protos, bfd string
		ok := false
		deadline := time.Now().Add(20 * time.Second)
		for !ok && time.Now().Before(deadline) {
			protos, _ = l.RouterBirdc(ctx, "show", "protocols")
			bfd, _ = l.RouterBirdc(ctx, "show", "bfd", "sessions")
			ok = strings.Count(protos, "Established") == 2 && strings.Count(bfd, " Up ") == 2
			if !ok {
				time.Sleep(200 * time.Millisecond)
			}
		}
		if !ok {
			t.Fatalf("router sessions:\n%s\n%s", protos, bfd)
		}
		prefixes := func(lines string) []string {
			var out []string
			for _, line := range strings.Split(lines, "\n") {
				f := strings.Fields(line)
				if len(f) == 0 || line[0] == ' ' || line[0] == '\t' {
					continue
				}
				p, err := netip.ParsePrefix(f[0])
				if a, aerr := netip.ParseAddr(f[0]); aerr == nil {
					p, err = netip.PrefixFrom(a, a.BitLen()), nil
				}
				if err != nil {
					continue
				}
				out = append(out, p.String())
			}
			slices.Sort(out)
			return slices.Compact(out)
		}
		var routed []string
		waitFor(t, "the router's routes equal what us-east learns from eu-central", 10*time.Second, func() bool {
			out, _ := l.RouterBirdc(ctx, "show", "route")
			routed = prefixes(out)
			learned := hostOut(t, l, "us-east-gw1", "ip", "route", "show", "proto", "bird")
			if l.State.Config.Pods6() {
				learned += hostOut(t, l, "us-east-gw1", "ip", "-6", "route", "show", "proto", "bird")
			}
			want := prefixes(learned)
			return len(want) > 0 && slices.Equal(routed, want)
		})
		t.Logf("operator router: 2 sessions with BFD up, %d prefixes of eu-central learned: %v", len(routed), routed)
	})

	t.Run("WANCutFailsOverWithinASecond", func(t *testing.T) {
		outages := wanCutOutage(t, l)
		for dir, o := range outages {
			if o > time.Second {
				t.Errorf("%s: outage %s after the designated gateway's WAN link was cut, want ≤ 1s (BFD 100ms × 3)", dir, o)
			}
		}
	})

	t.Run("GatewayKilledFailsOverWithinASecond", func(t *testing.T) {
		// The region's other gateway sees it down over BFD and reports at
		// once; the controller moves its clusters without waiting for the
		// heartbeat timeout (1.5 s here).
		regions, err := l.Admin.Regions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		victim := regions[0].Designation["c1"]
		fwd, back, _ := outage(t, l, func() { l.KillHost(victim) }, 20*time.Second, nil)
		t.Logf("killed %s: outage %s forward, %s back", victim, fwd.Round(time.Millisecond), back.Round(time.Millisecond))
		if fwd > time.Second || back > time.Second {
			t.Errorf("outage %s / %s after killing the designated gateway, want ≤ 1s", fwd, back)
		}
		if err := l.StartAgent(victim); err != nil {
			t.Fatal(err)
		}
		waitFor(t, victim+" back with its sessions", 30*time.Second, func() bool {
			out, _ := l.Birdc(ctx, victim, "show", "protocols")
			n, err := l.Admin.Node(ctx, victim)
			return err == nil && n.Healthy != nil && *n.Healthy && backboneEstablished(out) == links
		})
	})

	t.Run("PartitionHealsByItself", func(t *testing.T) {
		partitionHeals(t, l)
	})

	t.Run("FlappingWANLinkSettles", func(t *testing.T) {
		// The designated gateway's WAN link flaps 5 times; traffic inside
		// the region never notices; once it is stable, every session is up
		// and stays up, and traffic across regions flows.
		regions, _ := l.Admin.Regions(ctx)
		victim := regions[0].Designation["c1"]
		in, err := l.Stream(ctx, "eu-central-c1-n1", true, host(t, l, "eu-central-c2-n1").PodAddr(), 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Stop()
		if !in.WaitOK(time.Time{}, 20, 20*time.Second) {
			t.Fatal("traffic inside the region not flowing")
		}
		start := time.Now()
		for range 5 {
			l.WANLink(victim, 0, false)
			time.Sleep(300 * time.Millisecond)
			l.WANLink(victim, l.State.Config.WANMTU, true)
			time.Sleep(300 * time.Millisecond)
		}
		if o, n := in.Outage(start); o > 200*time.Millisecond {
			t.Errorf("traffic inside the region stopped for %s (%d probes) while the WAN link flapped", o, n)
		}
		waitFor(t, "sessions back after the flapping", 30*time.Second, func() bool {
			for _, g := range gateways {
				if out, _ := l.Birdc(ctx, g, "show", "protocols"); backboneEstablished(out) != links {
					return false
				}
			}
			return true
		})
		before := map[string]string{}
		for _, g := range gateways {
			before[g], _ = l.Birdc(ctx, g, "show", "protocols")
		}
		time.Sleep(3 * time.Second)
		for _, g := range gateways {
			if after, _ := l.Birdc(ctx, g, "show", "protocols"); after != before[g] {
				t.Errorf("%s: sessions changed after the link settled (flapping):\n%s\n%s", g, before[g], after)
			}
		}
		check(t, l)
	})

	t.Run("AgentCrashLoopLeaksNothing", func(t *testing.T) {
		// kill -9 a gateway's agent 5 times while pods stream across
		// regions through it: each restart adopts the links and BIRD, so
		// traffic keeps flowing and nothing is left twice in the kernel.
		regions, _ := l.Admin.Regions(ctx)
		victim := regions[0].Designation["c1"]
		fwd, err := l.Stream(ctx, "eu-central-c1-n1", true, host(t, l, "us-east-c1-n1").PodAddr(), 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer fwd.Stop()
		if !fwd.WaitOK(time.Time{}, 20, 20*time.Second) {
			t.Fatal("traffic not flowing")
		}
		start := time.Now()
		for i := range 5 {
			killed := time.Now()
			if err := l.KillAgent(victim); err != nil {
				t.Fatal(err)
			}
			if err := l.StartAgent(victim); err != nil {
				t.Fatal(err)
			}
			waitFor(t, fmt.Sprintf("restart %d: agent reporting with BIRD running", i+1), 30*time.Second, func() bool {
				n, err := l.Admin.Node(ctx, victim)
				return err == nil && n.Routing != nil && n.Routing.BIRD == "running" && n.ReportedAt != nil && n.ReportedAt.After(killed)
			})
		}
		if o, n := fwd.Outage(start); o > 500*time.Millisecond {
			t.Errorf("5 agent crashes interrupted traffic through the gateway for %s (%d probes)", o, n)
		}
		// Its BIRD kept BFD up throughout: the region's other gateway
		// vouched for it, so the silent agent cost no failover.
		if after, err := l.Admin.Regions(ctx); err != nil || after[0].Designation["c1"] != victim {
			t.Errorf("c1 moved off %s while only its agent restarted (BFD up): %v %v", victim, after, err)
		}
		if ev, err := l.Admin.Events(ctx, 200); err == nil {
			for _, e := range ev {
				if e.Time.After(start) && (e.Kind == "failover" || e.Kind == "gateway-health" && e.Subject == victim) {
					t.Errorf("event during the crash loop: %+v", e)
				}
			}
		}
		if n := strings.TrimSpace(hostOut(t, l, victim, "sh", "-c", "ip -o link show 2>/dev/null | grep -c ': smbb'")); n != fmt.Sprint(links) {
			t.Errorf("%s backbone links after 5 crashes, want %d:\n%s", n, links, hostOut(t, l, victim, "ip", "-br", "link"))
		}
		if n := strings.TrimSpace(hostOut(t, l, victim, "sh", "-c", "ip rule | grep -c 'lookup 5200'")); n != fmt.Sprint(links-(l.State.Config.Gateways-1)) {
			t.Errorf("%s detour rules after 5 crashes, want %d (one per link to another region):\n%s", n, links-(l.State.Config.Gateways-1), hostOut(t, l, victim, "ip", "rule"))
		}
		if n := strings.TrimSpace(hostOut(t, l, victim, "sh", "-c", "nft list tables | wc -l")); n != "1" {
			t.Errorf("%s nftables tables after 5 crashes:\n%s", n, hostOut(t, l, victim, "nft", "list", "tables"))
		}
		pids, _ := exec.Command("ip", "netns", "pids", host(t, l, victim).NS()).Output()
		birds, wgs := 0, 0
		var procs []string
		for _, pid := range strings.Fields(string(pids)) {
			cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			c := string(cmdline)
			procs = append(procs, pid+": "+strings.ReplaceAll(c, "\x00", " "))
			switch {
			case filepath.Base(strings.Split(c, "\x00")[0]) == "bird": // not birdc, which the agent runs for its reports
				birds++
			case strings.Contains(c, "wireguard-go"):
				wgs++
			}
		}
		// Userspace WireGuard: one wireguard-go process holds sm0 and the
		// links (a leaked or duplicated daemon would make two).
		if birds != 1 || (wgs != 0 && wgs != 1) {
			t.Errorf("after 5 crashes: %d bird processes (want 1), %d wireguard-go processes (want 1: sm0 and the %d links in one); processes in %s:\n%s",
				birds, wgs, links, victim, strings.Join(procs, "\n"))
		}
	})
}

// wanCutOutage cuts the WAN link of the designated gateway of
// eu-central/c1 while pods stream both ways, restores it once traffic
// flows again, and checks that BGP then settles and stays put. The
// outages cover both the cut and the return of the link.
func wanCutOutage(t *testing.T, l *lab.Lab) map[string]time.Duration {
	ctx := context.Background()
	regions, err := l.Admin.Regions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victim := regions[0].Designation["c1"]
	defer l.WANLink(victim, l.State.Config.WANMTU, true)
	of, ob, recovered := outage(t, l, func() { l.WANLink(victim, 0, false) }, 20*time.Second, func() {
		if err := l.WANLink(victim, l.State.Config.WANMTU, true); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "BGP back on "+victim, 20*time.Second, func() bool {
			out, _ := l.Birdc(ctx, victim, "show", "protocols")
			return backboneEstablished(out) == backboneLinks(l)
		})
		time.Sleep(time.Second)
	})
	if !recovered {
		t.Fatalf("no recovery within 20 s of cutting %s's WAN link", victim)
	}
	t.Logf("cut %s's WAN link, then restored it: outage %s forward, %s back", victim, of.Round(time.Millisecond), ob.Round(time.Millisecond))
	before, _ := l.Birdc(ctx, victim, "show", "protocols")
	time.Sleep(3 * time.Second)
	after, _ := l.Birdc(ctx, victim, "show", "protocols")
	if before != after {
		t.Errorf("sessions changed while the link was stable (flapping):\nbefore\n%s\nafter\n%s", before, after)
	}
	return map[string]time.Duration{"forward": of, "back": ob}
}

// partitionHeals cuts every WAN link of one region: traffic inside each
// region keeps working, traffic across stops; when the links return,
// traffic across resumes with no manual step.
func partitionHeals(t *testing.T, l *lab.Lab) {
	ctx := context.Background()
	var cut []string
	for _, h := range l.State.Hosts {
		if h.Role == "gateway" && h.Region == "us-east" {
			cut = append(cut, h.Name)
		}
	}
	restore := func() {
		for _, g := range cut {
			l.WANLink(g, l.State.Config.WANMTU, true)
		}
	}
	defer restore()
	for _, g := range cut {
		if err := l.WANLink(g, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second)
	m, err := l.Check(ctx, lab.CheckOptions{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	inside, across, insideOK, acrossOK := 0, 0, 0, 0
	for _, r := range m.Results {
		a, b := m.Region(r.From), m.Region(r.To)
		if a == "" || b == "" {
			continue
		}
		if a == b {
			inside++
			want := lab.Expect{ICMP: true, TCP: true}
			if m.Expected != nil {
				want = m.Expected[[2]string{r.From, r.To}]
			}
			if r.ICMP == want.ICMP && r.TCP == want.TCP {
				insideOK++
			}
		} else {
			across++
			if r.ICMP || r.TCP {
				acrossOK++
			}
		}
	}
	if inside == 0 || insideOK != inside {
		t.Errorf("during the partition %d of %d probes inside a region matched the policy, want all", insideOK, inside)
	}
	if acrossOK != 0 {
		t.Errorf("during the partition %d of %d probes across regions got through, want none", acrossOK, across)
	}
	restore()
	took := waitFor(t, "traffic across regions after the partition", 60*time.Second, func() bool {
		m, err := l.Check(ctx, lab.CheckOptions{Timeout: time.Second})
		return err == nil && m.Failures() == 0
	})
	t.Logf("partition: %d/%d probes inside regions as the policy says, %d/%d across failed; all traffic back %s after the links returned",
		insideOK, inside, across-acrossOK, across, took.Round(time.Millisecond))
}
