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
