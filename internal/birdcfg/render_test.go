package birdcfg

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite golden files")

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

// sample is eu-gw1 of a two-region mesh: designated for c1, with an iBGP
// link to eu-gw2, eBGP links to us-gw1 and us-gw2, and a router of the
// operator.
func sample() *netmap.Routing {
	link := func(iface, peer, region string, asn uint32, local, remote string, port int) netmap.BackboneLink {
		return netmap.BackboneLink{Interface: iface, ListenPort: port, Address: netip.MustParsePrefix(local), PeerAddress: netip.MustParseAddr(remote),
			Peer: peer, PeerRegion: region, PeerASN: asn, Endpoint: netip.MustParseAddrPort("203.0.113.2:52000"), MTU: 1440}
	}
	return &netmap.Routing{
		ASN: 4200000000, RouterID: netip.MustParseAddr("100.64.0.1"), BFDIntervalMs: 100, BFDMultiplier: 3,
		Originate: pfx("100.64.0.1/32", "100.64.32.0/19", "10.0.0.0/20"),
		Local:     pfx("100.64.0.1/32", "100.64.0.2/32", "100.64.32.0/19", "100.64.64.0/19", "10.0.0.0/20", "10.0.16.0/20", "100.64.16.0/20"),
		Accept:    []netmap.RegionPrefixes{{Region: "us-east", ASN: 4200000001, Prefixes: pfx("100.66.0.1/32", "100.66.0.2/32", "100.66.32.0/19", "10.0.64.0/20")}},
		Links: []netmap.BackboneLink{
			link("smbb1", "eu-gw2", "eu-central", 4200000000, "169.254.64.2/31", "169.254.64.3", 52001),
			link("smbb64", "us-gw1", "us-east", 4200000001, "169.254.64.128/31", "169.254.64.129", 52064),
			link("smbb65", "us-gw2", "us-east", 4200000001, "169.254.64.130/31", "169.254.64.131", 52065),
		},
		External: []netmap.ExternalPeer{
			{Name: "core-1", Address: netip.MustParseAddr("192.0.2.1"), ASN: 64512, Password: "s3cret", BFD: true},
			{Name: "edge", Address: netip.MustParseAddr("198.51.100.7"), ASN: 64513, Multihop: 2},
		},
	}
}

func TestRenderGolden(t *testing.T) {
	conf, err := Render("eu-gw1", sample())
	if err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/eu-gw1.conf"
	if *update {
		os.WriteFile(golden, conf, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != string(conf) {
		t.Errorf("rendered config differs from %s (go test -update to accept):\n%s", golden, conf)
	}
	for _, must := range []string{
		`neighbor 169.254.64.3 as 4200000000;`, `interface "smbb1";`, "next hop self;", // iBGP
		`neighbor 169.254.64.129 as 4200000001;`, "if net ~ REGION_us_east then accept;", "bgp_path.prepend(LOCAL_AS);", // eBGP
		"route 100.64.32.0/19 unreachable;", "krt_prefsrc = 100.64.0.1;", "learn off;", "min rx interval 100 ms;", "multiplier 3;",
		`password "s3cret";`, "multihop 2;", "import none;",
	} {
		if !strings.Contains(string(conf), must) {
			t.Errorf("config lacks %q", must)
		}
	}
}

func TestRenderedConfigParses(t *testing.T) {
	testenv.RequireBinary(t, "bird")
	conf, err := Render("eu-gw1", sample())
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(context.Background(), conf); err != nil {
		t.Fatalf("bird -p refuses the rendered config: %v", err)
	}
	// Baseline-free edge cases parse too: nothing to originate, no
	// accepted regions, no external peers.
	rt := sample()
	rt.Originate, rt.Accept, rt.External = nil, nil, nil
	conf, _ = Render("eu-gw1", rt)
	if err := Check(context.Background(), conf); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	bad := strings.Replace(string(conf), "router id", "router idd", 1)
	if err := Check(context.Background(), []byte(bad)); err == nil || !strings.Contains(err.Error(), "bird.conf:") {
		t.Errorf("a broken config passes, or the error lacks the line: %v", err)
	}
}

func TestRenderRefuses(t *testing.T) {
	rt := sample()
	rt.External[0].Password = `a"b`
	if _, err := Render("x", rt); err == nil {
		t.Error("a password with a quote is written into the config")
	}
	if _, err := Render("x", nil); err == nil {
		t.Error("nil routing rendered")
	}
	rt = sample()
	rt.RouterID = netip.MustParseAddr("fd00::1")
	if _, err := Render("x", rt); err == nil {
		t.Error("IPv6 router ID accepted")
	}
}

func TestParseStatus(t *testing.T) {
	protos := ParseProtocols(`BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     1764053423    
originate4 Static     master4    up     1764053423    
bb_smbb1   BGP        ---        up     1764053424    Established   
bb_smbb64  BGP        ---        start  1764053424    Active        Socket: Connection refused
bfd1       BFD        ---        up     1764053423    
`)
	if len(protos) != 5 || protos[2].Name != "bb_smbb1" || protos[2].Info != "Established" || protos[3].State != "start" || protos[3].Info != "Active Socket: Connection refused" {
		t.Errorf("protocols: %+v", protos)
	}
	bfd := ParseBFD(`BIRD 2.0.12 ready.
bfd1:
IP address                Interface  State      Since         Interval  Timeout
169.254.64.3              smbb1      Up         1764053424      0.100    0.300
169.254.64.129            smbb64     Down       1764053424      1.000    0.000
`)
	if len(bfd) != 2 || bfd[0].Address != "169.254.64.3" || bfd[0].State != "Up" || bfd[1].Interface != "smbb64" || bfd[1].State != "Down" {
		t.Errorf("bfd: %+v", bfd)
	}
}

// sampleDual is sample in a mesh with an IPv6 overlay and IPv6 pods: every
// set has its IPv6 prefixes, the gateway its overlay IPv6 address, and the
// operator's second router peers over IPv6.
func sampleDual() *netmap.Routing {
	rt := sample()
	rt.RouterIPv6 = netip.MustParseAddr("fd7a::1")
	rt.Originate = append(rt.Originate, pfx("fd7a::1/128", "fd7a:0:0:1::/64", "fd00:10::/56")...)
	rt.Local = append(rt.Local, pfx("fd7a::1/128", "fd7a::2/128", "fd7a:0:0:1::/64", "fd7a:0:0:2::/64", "fd00:10::/56", "fd00:10:0:100::/56")...)
	rt.Accept[0].Prefixes = append(rt.Accept[0].Prefixes, pfx("fd7a:1::1/128", "fd7a:1::2/128", "fd7a:1:0:1::/64", "fd00:20::/56")...)
	rt.External[1].Address = netip.MustParseAddr("2001:db8:1::7")
	return rt
}

// sampleV6Underlay is sample with every backbone link's endpoint on an
// IPv6 underlay: BIRD's configuration does not change (BGP and BFD run
// inside the links, over their IPv4 link addresses).
func sampleV6Underlay() *netmap.Routing {
	rt := sample()
	for i := range rt.Links {
		rt.Links[i].Endpoint = netip.MustParseAddrPort("[2001:db8:ff::2]:52000")
	}
	return rt
}

// TestIssue15RenderIPv6 renders the three kinds of mesh: IPv4 only (the
// golden file of before, unchanged), IPv6 underlay (the same config), and
// dual stack (IPv4 and IPv6 channels on every session).
func TestIssue15RenderIPv6(t *testing.T) {
	v4, err := Render("eu-gw1", sample())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(v4), "ipv6") {
		t.Errorf("an IPv4-only mesh got IPv6 channels")
	}
	under, err := Render("eu-gw1", sampleV6Underlay())
	if err != nil || string(under) != string(v4) {
		t.Errorf("the underlay's family changed BIRD's config (%v)", err)
	}
	dual, err := Render("eu-gw1", sampleDual())
	if err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/eu-gw1-dual.conf"
	if *update {
		os.WriteFile(golden, dual, 0o644)
	}
	if want, err := os.ReadFile(golden); err != nil || string(want) != string(dual) {
		t.Errorf("rendered config differs from %s (go test -update to accept; %v):\n%s", golden, err, dual)
	}
	for _, must := range []string{
		"define ORIGINATE6 = [ fd00:10::/56, fd7a::1/128, fd7a:0:0:1::/64 ];",
		"define REGION6_us_east = [ fd00:20::/56, fd7a:1::1/128, fd7a:1::2/128, fd7a:1:0:1::/64 ];",
		"route fd00:10::/56 unreachable;", "krt_prefsrc = fd7a::1;", "ipv6 table detour_v6;", "kernel table 5200;",
		// every backbone session carries both families
		"if net ~ REGION6_us_east then { ifname = \"smbb64\"; accept; }",
		"if net ~ LOCAL_REGION6 || net ~ REMOTE6 then { ifname = \"smbb1\"; accept; }",
		"extended next hop on;",
		// the IPv6 router: both families over its IPv6 session
		"neighbor 2001:db8:1::7 as 64513;",
		"if net ~ LOCAL_REGION6 && (source = RTS_STATIC || source = RTS_BGP) then accept;",
	} {
		if !strings.Contains(string(dual), must) {
			t.Errorf("dual-stack config lacks %q", must)
		}
	}
	if n := strings.Count(string(dual), "  ipv6 {\n"); n != 6 {
		t.Errorf("%d IPv6 channels, want 6 (kernel, detour, 3 links, the IPv6 router)", n)
	}
	testenv.RequireBinary(t, "bird")
	for name, conf := range map[string][]byte{"ipv4": v4, "ipv6-underlay": under, "dual": dual} {
		if err := Check(context.Background(), conf); err != nil {
			t.Errorf("bird -p refuses the %s config: %v", name, err)
		}
	}
	// Edge cases: IPv6 but nothing to originate or accept.
	rt := sampleDual()
	rt.Originate, rt.Accept, rt.External = pfx("fd7a::1/128"), nil, nil
	conf, err := Render("eu-gw1", rt)
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(context.Background(), conf); err != nil {
		t.Errorf("minimal dual-stack config: %v", err)
	}
}
