package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/statemesh/statemesh/internal/birdcfg"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
)

// TestShapesPlan: the lab's spec of every shape (--pods × --underlay ×
// --bgp) is a valid mesh that plans, with the address families asked for.
func TestShapesPlan(t *testing.T) {
	for _, pods := range []string{FamilyIPv4, FamilyIPv6, FamilyDual} {
		for _, underlay := range []string{FamilyIPv4, FamilyIPv6} {
			for _, bgp := range []bool{false, true} {
				name := "pods=" + pods + "/underlay=" + underlay
				if bgp {
					name += "/bgp"
				}
				t.Run(name, func(t *testing.T) {
					c := Config{PodFamily: pods, UnderlayFamily: underlay, BGP: bgp, Policy: true}
					m := labSpec(t, &c)
					if _, err := plan.Compute(m, nil); err != nil {
						t.Fatalf("plan: %v\n%s", err, c.Spec())
					}
					a := m.Addressing
					if got := len(a.PodIPv4) > 0; got != c.Pods4() {
						t.Errorf("IPv4 pods %v, want %v", a.PodIPv4, c.Pods4())
					}
					if got := len(a.PodIPv6) > 0 && a.OverlayIPv6 != ""; got != c.Pods6() {
						t.Errorf("IPv6 pods %v overlay %q, want %v", a.PodIPv6, a.OverlayIPv6, c.Pods6())
					}
					if m.Underlay.Family != underlay || m.Underlay.WAN.Family != underlay {
						t.Errorf("underlay family %s, WAN %s, want %s", m.Underlay.Family, m.Underlay.WAN.Family, underlay)
					}
					if bgp {
						peer := m.Regions[0].BGP.ExternalPeers[0].Address
						if want := c.RouterAddr().String(); peer != want {
							t.Errorf("external peer %s, want the router's %s", peer, want)
						}
					}
				})
			}
		}
	}
}

func TestValidateFamilies(t *testing.T) {
	for _, c := range []Config{{PodFamily: "ipv5"}, {UnderlayFamily: "dual"}} {
		c.SetDefaults()
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

// TestIPv6Layout: on an IPv6 underlay every underlay and WAN address is
// IPv6 and mirrors its IPv4 counterpart; the management network stays
// IPv4.
func TestIPv6Layout(t *testing.T) {
	c4 := Config{}
	c4.SetDefaults()
	c6 := Config{UnderlayFamily: FamilyIPv6}
	c6.SetDefaults()
	h4, h6 := c4.Hosts(), c6.Hosts()
	if len(h4) != len(h6) {
		t.Fatalf("%d hosts, %d with IPv6", len(h4), len(h6))
	}
	seen := map[netip.Addr]string{}
	for i, h := range h6 {
		if !h.Underlay.Is6() || h.Mgmt != h4[i].Mgmt || !h.Mgmt.Is4() {
			t.Errorf("%s: underlay %s, mgmt %s", h.Name, h.Underlay, h.Mgmt)
		}
		b4 := h4[i].Underlay.As4()
		if want := netip.MustParseAddr(strings.ReplaceAll(strings.Replace(h4[i].Underlay.String(), "172.16.", "fd00:172:16:", 1), ".", "::")); h.Underlay != want {
			t.Errorf("%s: underlay %s, want %s (from %v)", h.Name, h.Underlay, want, b4)
		}
		if h.Role == "gateway" {
			if !h.WAN.Is6() {
				t.Errorf("%s: WAN %s", h.Name, h.WAN)
			}
			if want := strings.Replace(h4[i].WAN.String(), "203.0.113.", "2001:db8:113::", 1); h.WAN.String() != want {
				t.Errorf("%s: WAN %s, want %s", h.Name, h.WAN, want)
			}
		}
		for _, a := range []netip.Addr{h.Underlay, h.WAN} {
			if other, dup := seen[a]; a.IsValid() && dup {
				t.Errorf("%s and %s share %s", h.Name, other, a)
			}
			seen[a] = h.Name
		}
	}
	if got := withBits(h6[0].Underlay); got != "fd00:172:16:1::1/64" {
		t.Errorf("withBits = %s", got)
	}
	if got := c6.RouterAddr().String(); got != "fd00:172:16:1::250" {
		t.Errorf("router %s", got)
	}
}

// TestPodNetwork: a pod gets an address and a default route per family of
// its node's pod blocks; IPv6 addresses skip duplicate address detection.
func TestPodNetwork(t *testing.T) {
	h := &Host{Name: "eu-central-c1-n1",
		PodBlock: netip.MustParsePrefix("10.0.0.0/27"), PodIP: netip.MustParseAddr("10.0.0.2"),
		PodBlock6: netip.MustParsePrefix("fd00:10::/123"), PodIP6: netip.MustParseAddr("fd00:10::2")}
	var got []string
	for _, a := range podNetwork(h) {
		got = append(got, strings.Join(a, " "))
	}
	want := []string{
		"ip -n sml-eu-central-c1-n1 link set pod0 up",
		"ip -n sml-eu-central-c1-n1-pod link set eth0 up",
		"ip -n sml-eu-central-c1-n1 addr add 10.0.0.1/27 dev pod0",
		"ip -n sml-eu-central-c1-n1-pod addr add 10.0.0.2/27 dev eth0",
		"ip -4 -n sml-eu-central-c1-n1-pod route add default via 10.0.0.1",
		"ip -n sml-eu-central-c1-n1 addr add fd00:10::1/123 dev pod0 nodad",
		"ip -n sml-eu-central-c1-n1-pod addr add fd00:10::2/123 dev eth0 nodad",
		"ip -6 -n sml-eu-central-c1-n1-pod route add default via fd00:10::1",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Error(d)
	}
	h.PodBlock, h.PodIP = netip.Prefix{}, netip.Addr{}
	if n := len(podNetwork(h)); n != 5 {
		t.Errorf("IPv6-only pod: %d commands, want 5", n)
	}
	if h.PodAddr() != h.PodIP6 {
		t.Errorf("PodAddr of an IPv6-only pod: %s", h.PodAddr())
	}
}

// TestEndpointsPerFamily: each node, pod and client is probed at each of
// its addresses, IPv4 names unchanged, IPv6 ones /v6; probes stay within
// a family and a kind.
func TestEndpointsPerFamily(t *testing.T) {
	n1 := &Host{Name: "a", Role: "node", Overlay: netip.MustParseAddr("100.64.0.1"), Overlay6: netip.MustParseAddr("fd7a:115c::1"),
		PodIP6: netip.MustParseAddr("fd00:10::2")}
	n2 := &Host{Name: "b", Role: "node", Overlay: netip.MustParseAddr("100.64.0.2"), Overlay6: netip.MustParseAddr("fd7a:115c::2"),
		PodIP6: netip.MustParseAddr("fd00:10::22")}
	gw := &Host{Name: "gw", Role: "gateway", Overlay: netip.MustParseAddr("100.64.0.9")}
	cl := &Client{Name: "laptop1", Address: netip.MustParseAddr("100.64.255.1"), Address6: netip.MustParseAddr("fd7a:115c:ff::1")}
	l := &Lab{State: &State{Hosts: []*Host{n1, n2, gw}, Clients: []*Client{cl}, Holders: map[string]int{}}}
	eps := l.endpoints()
	var names []string
	for _, e := range eps {
		names = append(names, e.Name+"="+e.Addr)
	}
	want := []string{"a=100.64.0.1", "a/v6=fd7a:115c::1", "a/pod/v6=fd00:10::2", "b=100.64.0.2", "b/v6=fd7a:115c::2", "b/pod/v6=fd00:10::22",
		"client laptop1=100.64.255.1", "client laptop1/v6=fd7a:115c:ff::1"}
	if d := cmp.Diff(want, names); d != "" {
		t.Fatal(d)
	}
	var pairs []string
	for _, s := range eps {
		for _, d := range eps {
			if probes(s, d) {
				pairs = append(pairs, s.Name+">"+d.Name)
			}
		}
	}
	wantPairs := []string{"a>b", "a/v6>b/v6", "a/pod/v6>b/pod/v6", "b>a", "b/v6>a/v6", "b/pod/v6>a/pod/v6",
		"client laptop1>a", "client laptop1>b",
		"client laptop1/v6>a/v6", "client laptop1/v6>a/pod/v6", "client laptop1/v6>b/v6", "client laptop1/v6>b/pod/v6"}
	if d := cmp.Diff(wantPairs, pairs); d != "" {
		t.Error(d)
	}
}

// TestExampleLabs: every lab file in examples/lab is a valid lab whose
// mesh plans.
func TestExampleLabs(t *testing.T) {
	files, err := filepath.Glob("../../examples/lab/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("lab examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var c Config
			if err := ParseConfig(data, &c); err != nil {
				t.Fatal(err)
			}
			c.SetDefaults()
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			m, err := spec.Parse([]byte(c.Spec()))
			if err == nil {
				_, err = plan.Compute(m, nil)
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRouterConfig: the operator router's BIRD configuration of each
// underlay family is one BIRD accepts, peering with the gateways'
// underlay addresses; over IPv6 it takes IPv4 with IPv6 next hops and,
// when the pods are IPv6, an IPv6 channel.
func TestRouterConfig(t *testing.T) {
	for _, c := range []Config{{}, {UnderlayFamily: FamilyIPv6, PodFamily: FamilyIPv6}, {UnderlayFamily: FamilyIPv6}} {
		c.BGP = true
		c.SetDefaults()
		l := &Lab{State: &State{Config: c, Hosts: c.Hosts()}}
		conf := l.routerConfig(regionASN)
		for _, h := range l.State.Hosts {
			if h.Role == "gateway" && h.Region == regionNames[0] && !strings.Contains(conf, "neighbor "+h.Underlay.String()+" as") {
				t.Errorf("%s/%s: no session with %s:\n%s", c.PodFamily, c.UnderlayFamily, h.Name, conf)
			}
		}
		if got, want := strings.Contains(conf, "extended next hop on"), c.Underlay6(); got != want {
			t.Errorf("%s/%s: extended next hop %v, want %v", c.PodFamily, c.UnderlayFamily, got, want)
		}
		if got, want := strings.Contains(conf, "ipv6 {"), c.Underlay6() && c.Pods6(); got != want {
			t.Errorf("%s/%s: IPv6 channel %v, want %v", c.PodFamily, c.UnderlayFamily, got, want)
		}
		if _, err := exec.LookPath("bird"); err != nil {
			continue
		}
		if err := birdcfg.Check(context.Background(), []byte(conf)); err != nil {
			t.Errorf("%s/%s: %v\n%s", c.PodFamily, c.UnderlayFamily, err, conf)
		}
	}
}

// TestPrintByFamily: the summary has a row per family and category, the
// header counts the probes of each family, and an IPv6 TCP answer from the
// right host (NAME or NAME/pod) counts as reaching it.
func TestPrintByFamily(t *testing.T) {
	a := &Host{Name: "eu-central-c1-n1", Region: "eu-central", Cluster: "c1", Role: "node", Overlay: netip.MustParseAddr("100.64.0.1"),
		Overlay6: netip.MustParseAddr("fd7a:115c::1"), PodIP6: netip.MustParseAddr("fd00:10::2")}
	b := &Host{Name: "us-east-c1-n1", Region: "us-east", Cluster: "c1", Role: "node", Overlay: netip.MustParseAddr("100.64.1.1"),
		Overlay6: netip.MustParseAddr("fd7a:115c:1::1"), PodIP6: netip.MustParseAddr("fd00:10:1::2")}
	l := &Lab{State: &State{Hosts: []*Host{a, b}, Holders: map[string]int{}}}
	m := &Matrix{kinds: map[string]*Endpoint{}}
	eps := l.endpoints()
	for _, e := range eps {
		m.Endpoints = append(m.Endpoints, e.Name)
		m.kinds[e.Name] = e
	}
	for _, s := range eps {
		for _, d := range eps {
			if probes(s, d) {
				peer := d.Host.Name
				if d.Pod {
					peer += "/pod"
				}
				m.Results = append(m.Results, ProbeResult{From: s.Name, To: d.Name, ICMP: true, TCP: true, Peer: peer})
			}
		}
	}
	var out strings.Builder
	m.Print(&out)
	squeezed := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{"2 IPv4 probes, 4 IPv6 probes", "IPv4 node↔node across regions 2/2 as expected",
		"IPv6 node↔node across regions 2/2 as expected", "IPv6 pod↔pod across regions 2/2 as expected",
		"(fd00:10:1::2)"} {
		if !strings.Contains(squeezed, want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
	if m.Failures() != 0 || m.Family("eu-central-c1-n1/pod/v6") != "IPv6" || m.Family("eu-central-c1-n1") != "IPv4" {
		t.Errorf("failures %d, families %q %q", m.Failures(), m.Family("eu-central-c1-n1/pod/v6"), m.Family("eu-central-c1-n1"))
	}
}

// TestDataplaneInSpec: --dataplane reaches the spec's dataplane.firewall
// (so the plan hands it to every node), no value leaves the spec silent,
// and an unknown one is refused before anything is built.
func TestDataplaneInSpec(t *testing.T) {
	for _, dp := range []string{"", spec.DataplaneEBPF, spec.DataplaneNFTables, spec.DataplaneAuto} {
		c := Config{Dataplane: dp, Policy: true}
		m := labSpec(t, &c)
		got := ""
		if m.Dataplane != nil {
			got = m.Dataplane.Firewall
		}
		if got != dp {
			t.Errorf("--dataplane %q: the spec says %q", dp, got)
		}
	}
	c := Config{Dataplane: "xdp"}
	c.SetDefaults()
	if err := c.Validate(); err == nil {
		t.Error("dataplane xdp accepted")
	}
}

// TestBigLabTrims: above BigLabRegions regions the agents check their
// nftables table every 10 s (an nft process per check and agent: a fifth
// of 2 cores in a 10-region lab at one a second), measure their paths every
// 30 s (at 3 s path echoes were most of a 20-region lab's gateway traffic)
// and run, with their wireguard-go, with GOMAXPROCS 1; smaller labs keep
// the agent's 1 s and 3 s probes
// (TestLab/FlushedTableIsRestored times the repair) and Go's default; a
// value given stays.
func TestBigLabTrims(t *testing.T) {
	for _, tc := range []struct {
		regions    int
		drift      time.Duration
		probe      time.Duration
		procs      int
		wantDrift  string
		wantProbe  string
		wantEnvArg string // "" : no env
	}{
		{regions: 2, wantDrift: "1s", wantProbe: "3s"},
		{regions: BigLabRegions, wantDrift: "1s", wantProbe: "3s"},
		{regions: BigLabRegions + 1, wantDrift: "10s", wantProbe: "30s", wantEnvArg: "GOMAXPROCS=1"},
		{regions: 20, wantDrift: "10s", wantProbe: "30s", wantEnvArg: "GOMAXPROCS=1"},
		{regions: 20, drift: 2 * time.Second, probe: 5 * time.Second, procs: 2, wantDrift: "2s", wantProbe: "5s", wantEnvArg: "GOMAXPROCS=2"},
		{regions: 2, procs: 1, wantDrift: "1s", wantProbe: "3s", wantEnvArg: "GOMAXPROCS=1"},
	} {
		t.Run(fmt.Sprintf("%d regions, %s %s %d given", tc.regions, tc.drift, tc.probe, tc.procs), func(t *testing.T) {
			c := Config{Regions: tc.regions, Clusters: 1, Nodes: 1, Gateways: 2, DriftInterval: tc.drift, ProbeInterval: tc.probe, GoMaxProcs: tc.procs}
			c.SetDefaults()
			l := &Lab{State: &State{Config: c, Holders: map[string]int{}}}
			argv := l.agentArgv(c.Hosts()[0], "")
			s := strings.Join(argv, " ")
			if !strings.Contains(s, " --drift-interval "+tc.wantDrift) {
				t.Errorf("agent argv %q: want --drift-interval %s", s, tc.wantDrift)
			}
			if !strings.Contains(s, " --probe-interval "+tc.wantProbe) {
				t.Errorf("agent argv %q: want --probe-interval %s", s, tc.wantProbe)
			}
			i := slices.Index(argv, "env")
			switch {
			case tc.wantEnvArg == "" && i >= 0:
				t.Errorf("agent argv %q: want no env", s)
			case tc.wantEnvArg != "" && (i < 0 || argv[i+1] != tc.wantEnvArg || argv[i+2] != c.Binary):
				t.Errorf("agent argv %q: want env %s %s agent ...", s, tc.wantEnvArg, c.Binary)
			}
		})
	}
}

// TestBFDIntervalInSpec: the lab's BFD interval (--bfd-interval, lab file
// bfdInterval) is the spec's routing.bfd.interval: 100 ms by default, 200 ms
// above BigLabRegions regions (the 10-region BIRD lab does not converge on
// 2 cores at 100 ms), what is given otherwise.
func TestBFDIntervalInSpec(t *testing.T) {
	for _, tc := range []struct {
		regions int
		given   time.Duration
		want    time.Duration
	}{
		{2, 0, 100 * time.Millisecond},
		{BigLabRegions, 0, 100 * time.Millisecond},
		{BigLabRegions + 1, 0, 200 * time.Millisecond},
		{20, 0, 200 * time.Millisecond},
		{10, 250 * time.Millisecond, 250 * time.Millisecond},
		{10, 100 * time.Millisecond, 100 * time.Millisecond},
	} {
		c := Config{Regions: tc.regions, Clusters: 1, Nodes: 1, Gateways: 2, BGP: true, PeersPerRegion: 1, BFDInterval: tc.given}
		m := labSpec(t, &c)
		if iv, mult := m.BFDTimers(); iv != tc.want || mult != 3 {
			t.Errorf("%d regions, bfdInterval %s: the spec says %s × %d, want %s × 3", tc.regions, tc.given, iv, mult, tc.want)
		}
	}
}

// labSpec is the mesh spec lab up would apply for c (defaults set): c and
// the spec are both valid.
func labSpec(t *testing.T, c *Config) *spec.Mesh {
	t.Helper()
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	m, err := spec.Parse([]byte(c.Spec()))
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Spec())
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("%v\n%s", err, c.Spec())
	}
	return m
}
