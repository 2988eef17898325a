package birdcfg

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

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// startBIRD runs bird in namespace ns with conf until the test ends.
func startBIRD(t *testing.T, ns, dir, name string, conf []byte) (socket string) {
	t.Helper()
	path := filepath.Join(dir, name+".conf")
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Check(context.Background(), conf); err != nil {
		t.Fatalf("bird -p refuses %s: %v", name, err)
	}
	socket = filepath.Join(dir, name+".ctl")
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, "bird", "-f", "-c", path, "-s", socket)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill() // ip netns exec execs bird: this is BIRD's pid
		cmd.Wait()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("%s's log:\n%s", name, b)
		}
	})
	return socket
}

func birdc(socket string, args ...string) string {
	out, _ := exec.Command("birdc", append([]string{"-s", socket}, args...)...).CombinedOutput()
	return string(out)
}

// TestIssue15BIRDsExchangeIPv6 runs the rendered configurations of
// three gateways in BIRD mode with dual-stack prefixes, eu-gw1 and eu-gw2
// of one region (iBGP) and us-gw1 of another (eBGP with eu-gw1), in
// namespaces joined by point-to-point links the way backbone links are
// (only their IPv4 /31, no neighbour discovery), and a router of the
// operator that peers with eu-gw1 over an IPv6-only underlay:
//   - the backbone sessions are Established with BFD up, and their IPv6
//     channels carry the regions' IPv6 prefixes: each kernel routes the
//     other region's IPv6 prefixes through the link (proto bird), and a
//     ping between the gateways' overlay IPv6 addresses crosses it;
//   - over iBGP: eu-gw2 reaches us-east through eu-gw1, eu-gw1 keeps
//     eu-gw2's cluster in the detour table only, us-gw1 learns it from
//     eu-gw1 with eu's AS prepended twice, and traffic from us-gw1 to
//     eu-gw2 is forwarded by eu-gw1 through the detour table (ip -6 rule);
//   - the router's session is over IPv6 with BFD over IPv6, and it learns
//     the region's IPv6 and IPv4 prefixes (IPv4 with IPv6 next hops, RFC
//     8950), nothing of the other region.
func TestIssue15BIRDsExchangeIPv6(t *testing.T) {
	testenv.RequireRoot(t)
	for _, b := range []string{"bird", "birdc", "ip", "ping"} {
		testenv.RequireBinary(t, b)
	}
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%100000)
	eu, eu2, us, rtr := "smv6-bd"+tag+"e", "smv6-bd"+tag+"f", "smv6-bd"+tag+"u", "smv6-bd"+tag+"r"
	for _, ns := range []string{eu, eu2, us, rtr} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.forwarding=1")
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	// The backbone link: like WireGuard, point to point, IPv4 /31 only.
	run(t, "ip", "link", "add", "smbb64", "netns", eu, "type", "veth", "peer", "name", "smbb1", "netns", us)
	run(t, "ip", "link", "add", "smbb2", "netns", eu, "type", "veth", "peer", "name", "smbb1", "netns", eu2)
	for _, c := range [][]string{
		{eu, "smbb64", "169.254.64.64/31"}, {us, "smbb1", "169.254.64.65/31"},
		{eu, "smbb2", "169.254.64.2/31"}, {eu2, "smbb1", "169.254.64.3/31"},
	} {
		run(t, "ip", "-n", c[0], "link", "set", c[1], "addrgenmode", "none", "address", "02:00:00:00:5e:01", "arp", "off")
		run(t, "ip", "-n", c[0], "addr", "add", c[2], "dev", c[1])
		run(t, "ip", "-n", c[0], "link", "set", c[1], "up")
	}
	// The operator's router on eu's IPv6-only underlay.
	run(t, "ip", "link", "add", "ul", "netns", eu, "type", "veth", "peer", "name", "ul", "netns", rtr)
	run(t, "ip", "-n", eu, "addr", "add", "fd00:15::1/64", "dev", "ul")
	run(t, "ip", "-n", rtr, "addr", "add", "fd00:15::2/64", "dev", "ul")
	run(t, "ip", "-n", eu, "link", "set", "ul", "up")
	run(t, "ip", "-n", rtr, "link", "set", "ul", "up")
	// The gateways' overlay addresses (the routes' source addresses).
	for _, c := range [][]string{{eu, "100.64.0.1/32"}, {eu, "fd7a::1/128"}, {eu2, "100.64.0.2/32"}, {eu2, "fd7a::2/128"},
		{us, "100.66.0.1/32"}, {us, "fd7a:1::1/128"}} {
		run(t, "ip", "-n", c[0], "addr", "add", c[1], "dev", "lo")
	}

	euPfx := pfx("100.64.0.1/32", "10.0.0.0/20", "fd7a::1/128", "fd00:10::/56")   // eu-gw1's and its cluster's
	eu2Pfx := pfx("100.64.0.2/32", "10.0.16.0/20", "fd7a::2/128", "fd00:11::/56") // eu-gw2's and its cluster's
	euAll := append(slices.Clone(euPfx), eu2Pfx...)
	usPfx := pfx("100.66.0.1/32", "10.0.64.0/20", "fd7a:1::1/128", "fd00:20::/56")
	usAccept := []netmap.RegionPrefixes{{Region: "us-east", ASN: 65020, Prefixes: usPfx}}
	euRt := &netmap.Routing{ASN: 65010, RouterID: netip.MustParseAddr("100.64.0.1"), RouterIPv6: netip.MustParseAddr("fd7a::1"),
		BFDIntervalMs: 100, BFDMultiplier: 3, Originate: euPfx, Local: euAll, Accept: usAccept,
		Links: []netmap.BackboneLink{
			{Interface: "smbb2", Address: netip.MustParsePrefix("169.254.64.2/31"), PeerAddress: netip.MustParseAddr("169.254.64.3"),
				Peer: "eu-gw2", PeerRegion: "eu-central", PeerASN: 65010},
			{Interface: "smbb64", Address: netip.MustParsePrefix("169.254.64.64/31"), PeerAddress: netip.MustParseAddr("169.254.64.65"),
				Peer: "us-gw1", PeerRegion: "us-east", PeerASN: 65020}},
		External: []netmap.ExternalPeer{{Name: "core", Address: netip.MustParseAddr("fd00:15::2"), ASN: 64512, BFD: true}},
	}
	eu2Rt := &netmap.Routing{ASN: 65010, RouterID: netip.MustParseAddr("100.64.0.2"), RouterIPv6: netip.MustParseAddr("fd7a::2"),
		BFDIntervalMs: 100, BFDMultiplier: 3, Originate: eu2Pfx, Local: euAll, Accept: usAccept,
		Links: []netmap.BackboneLink{{Interface: "smbb1", Address: netip.MustParsePrefix("169.254.64.3/31"), PeerAddress: netip.MustParseAddr("169.254.64.2"),
			Peer: "eu-gw1", PeerRegion: "eu-central", PeerASN: 65010}},
	}
	usRt := &netmap.Routing{ASN: 65020, RouterID: netip.MustParseAddr("100.66.0.1"), RouterIPv6: netip.MustParseAddr("fd7a:1::1"),
		BFDIntervalMs: 100, BFDMultiplier: 3, Originate: usPfx, Local: usPfx,
		Accept: []netmap.RegionPrefixes{{Region: "eu-central", ASN: 65010, Prefixes: euAll}},
		Links: []netmap.BackboneLink{{Interface: "smbb1", Address: netip.MustParsePrefix("169.254.64.65/31"), PeerAddress: netip.MustParseAddr("169.254.64.64"),
			Peer: "eu-gw1", PeerRegion: "eu-central", PeerASN: 65010}},
	}
	euConf, err := Render("eu-gw1", euRt)
	if err != nil {
		t.Fatal(err)
	}
	usConf, err := Render("us-gw1", usRt)
	if err != nil {
		t.Fatal(err)
	}
	eu2Conf, err := Render("eu-gw2", eu2Rt)
	if err != nil {
		t.Fatal(err)
	}
	// What the agent does next to BIRD: traffic from another region's link
	// looks up the detour table first.
	run(t, "ip", "-n", eu, "-6", "rule", "add", "iif", "smbb64", "lookup", "5200", "pref", "1000")
	router := []byte(`log stderr all;
router id 192.0.2.9;
protocol device { scan time 10; }
protocol bfd { interface "ul" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }
protocol bgp gateway1 {
  local as 64512;
  neighbor fd00:15::1 as 65010;
  bfd on;
  connect retry time 2;
  ipv4 { extended next hop on; import all; export none; };
  ipv6 { import all; export none; };
}
`)
	dir := t.TempDir()
	euSock := startBIRD(t, eu, dir, "eu-gw1", euConf)
	usSock := startBIRD(t, us, dir, "us-gw1", usConf)
	eu2Sock := startBIRD(t, eu2, dir, "eu-gw2", eu2Conf)
	rSock := startBIRD(t, rtr, dir, "router", router)

	// BGP's connect delay is 1 s here; give the sessions 20 s.
	var euRoutes, euDetour, eu2Routes, usRoutes, rRoutes string
	deadline := time.Now().Add(20 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		euRoutes = run(t, "ip", "-n", eu, "-6", "route", "show", "proto", "bird")
		euDetour = run(t, "ip", "-n", eu, "-6", "route", "show", "table", "5200")
		eu2Routes = run(t, "ip", "-n", eu2, "-6", "route", "show", "proto", "bird")
		usRoutes = run(t, "ip", "-n", us, "-6", "route", "show", "proto", "bird")
		rRoutes = birdc(rSock, "show", "route")
		if strings.Contains(euRoutes, "fd00:20::/56") && strings.Contains(usRoutes, "fd00:10::/56") && strings.Contains(usRoutes, "fd00:11::/56") &&
			strings.Contains(eu2Routes, "fd00:20::/56") && strings.Contains(euDetour, "fd00:11::/56") &&
			strings.Contains(rRoutes, "fd00:10::/56") && strings.Contains(rRoutes, "10.0.0.0/20") && strings.Contains(rRoutes, "fd00:11::/56") {
			break
		}
	}
	t.Logf("eu-gw1's IPv6 routes:\n%s\neu-gw1's table 5200:\n%s\neu-gw2's:\n%s\nus-gw1's:\n%s\nthe router's BIRD:\n%s", euRoutes, euDetour, eu2Routes, usRoutes, rRoutes)
	for _, c := range []struct{ got, want, what string }{
		{euRoutes, "fd00:20::/56 dev smbb64 src fd7a::1", "eu-gw1 routes us-east's IPv6 pods through the link"},
		{euRoutes, "fd7a:1::1 dev smbb64 src fd7a::1", "eu-gw1 routes us-gw1's overlay IPv6 address through the link"},
		{usRoutes, "fd00:10::/56 dev smbb1 src fd7a:1::1", "us-gw1 routes eu-central's IPv6 pods through the link"},
		{eu2Routes, "fd00:20::/56 dev smbb1 src fd7a::2", "eu-gw2 routes us-east's IPv6 pods through eu-gw1 (iBGP)"},
		{euDetour, "fd00:11::/56 dev smbb2 proto bird src fd7a::1", "eu-gw1 keeps eu-gw2's cluster in the detour table"},
		{usRoutes, "fd00:11::/56 dev smbb1 src fd7a:1::1", "us-gw1 reaches eu-gw2's cluster through eu-gw1"},
		{rRoutes, "fd00:10::/56", "the router learns eu-central's IPv6 pods"},
		{rRoutes, "fd00:11::/56", "the router learns eu-gw2's IPv6 pods (from eu-gw1, over iBGP)"},
		{rRoutes, "fd7a::1/128", "the router learns eu-gw1's overlay IPv6 address"},
		{rRoutes, "10.0.0.0/20", "the router learns eu-central's IPv4 pods over the IPv6 session"},
	} {
		if !strings.Contains(c.got, c.want) {
			t.Errorf("%s: no %q", c.what, c.want)
		}
	}
	if strings.Contains(euRoutes, "fd00:11::") {
		t.Error("eu-gw1 put its own region's prefix (learned over iBGP) into the main table")
	}
	if r := birdc(usSock, "show", "route", "for", "fd00:11::1", "all"); !strings.Contains(r, "65010 65010 65010") {
		t.Errorf("us-gw1's path to eu-gw2's cluster should carry eu's AS prepended twice:\n%s", r)
	}
	if strings.Contains(rRoutes, "fd00:20::") || strings.Contains(rRoutes, "10.0.64.0") {
		t.Error("the router learned us-east's prefixes: it must see eu-central's only")
	}
	if v4 := run(t, "ip", "-n", us, "route", "show", "proto", "bird"); !strings.Contains(v4, "10.0.0.0/20 via 169.254.64.64 dev smbb1") {
		t.Errorf("the IPv4 channel: us-gw1's IPv4 routes:\n%s", v4)
	}
	for name, sock := range map[string]string{"us-gw1": usSock, "eu-gw2": eu2Sock} {
		if protos := birdc(sock, "show", "protocols"); !strings.Contains(protos, "Established") {
			t.Errorf("%s's session is not Established:\n%s", name, protos)
		}
	}
	protos := birdc(euSock, "show", "protocols")
	for _, p := range []string{"bb_smbb2", "bb_smbb64", "ext_core"} {
		if !strings.Contains(protos, p) || !strings.Contains(protos[strings.Index(protos, p):], "Established") {
			t.Errorf("eu-gw1's %s is not Established:\n%s", p, protos)
		}
	}
	bfd := birdc(euSock, "show", "bfd", "sessions")
	for _, peer := range []string{"169.254.64.3", "169.254.64.65", "fd00:15::2"} {
		i := strings.Index(bfd, peer)
		if i < 0 || !strings.Contains(strings.SplitN(bfd[i:], "\n", 2)[0], "Up") {
			t.Errorf("BFD with %s is not Up:\n%s", peer, bfd)
		}
	}
	// Packets: eu-gw1's overlay IPv6 address reaches us-gw1's over the link.
	if out, err := exec.Command("ip", "netns", "exec", eu, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-I", "fd7a::1", "fd7a:1::1").CombinedOutput(); err != nil {
		t.Errorf("ping fd7a::1 → fd7a:1::1 over the backbone link: %v\n%s", err, out)
	}
	// us-gw1 → eu-gw2 through eu-gw1: in on smbb64, the detour table, out
	// on smbb2; the reply takes eu-gw2's route to us-east through eu-gw1.
	if out, err := exec.Command("ip", "netns", "exec", us, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-I", "fd7a:1::1", "fd7a::2").CombinedOutput(); err != nil {
		t.Errorf("ping fd7a:1::1 → fd7a::2 through eu-gw1's detour table: %v\n%s", err, out)
	}
}
