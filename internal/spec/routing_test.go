package spec

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const twoRegions = `apiVersion: statemesh.dev/v1alpha1
kind: Mesh
metadata:
  name: t
addressing:
  podIPv4: [10.0.0.0/8]
regions:
  - name: eu
    clusters: [{name: prod, maxNodes: 100}]
  - name: us
    clusters: [{name: prod, maxNodes: 100}]
`

func TestRoutingDefaults(t *testing.T) {
	m, err := Parse([]byte(twoRegions))
	if err != nil {
		t.Fatal(err)
	}
	if m.BGPEnabled(0) || m.BGPEnabled(1) {
		t.Error("BIRD mode is on without routing.bgp")
	}
	m, err = Parse([]byte(twoRegions + "routing:\n  bgp: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	iv, mult := m.BFDTimers()
	if !m.BGPEnabled(0) || !m.BGPEnabled(1) || m.RegionASN(0) != DefaultASNBase || m.RegionASN(1) != DefaultASNBase+1 || iv != 100*time.Millisecond || mult != 3 {
		t.Errorf("defaults: bgp %v/%v asn %d/%d bfd %s×%d", m.BGPEnabled(0), m.BGPEnabled(1), m.RegionASN(0), m.RegionASN(1), iv, mult)
	}
	off := strings.Replace(twoRegions, "  - name: us\n", "  - name: us\n    bgp: {enabled: false}\n", 1) + "routing:\n  bgp: true\n"
	if m, err = Parse([]byte(off)); err != nil || m.BGPEnabled(1) || !m.BGPEnabled(0) {
		t.Errorf("per-region override: %v", err)
	}
}

func TestRoutingRefusesBadBGPSettings(t *testing.T) {
	in := strings.Replace(twoRegions, "  - name: us\n", `  - name: us
    bgp:
      asn: 23456
      externalPeers:
        - {name: core, address: 192.0.2.1, asn: 4200000001}
        - {name: core, address: not-an-ip, asn: 0, password: "has space", multihop: 300}
`, 1)
	in = strings.Replace(in, "  - name: eu\n", "  - name: eu\n    bgp: {asn: 65001}\n", 1)
	in += "routing:\n  bgp: true\n  bfd: {interval: 1ms, multiplier: 300}\n  backbone: {peersPerRegion: 33}\n"
	_, err := Parse([]byte(in))
	want := []string{
		"routing.bfd.interval", "routing.bfd.multiplier", "routing.backbone.peersPerRegion",
		"regions[1].bgp.asn",
		"regions[1].bgp.externalPeers[1].name", "regions[1].bgp.externalPeers[1].address", "regions[1].bgp.externalPeers[1].asn",
		"regions[1].bgp.externalPeers[1].password", "regions[1].bgp.externalPeers[1].multihop",
	}
	if diff := cmp.Diff(want, paths(err)); diff != "" {
		t.Errorf("(-want +got):\n%s\n%v", diff, err)
	}
	// Two regions with one AS; an external peer in the region's own AS;
	// external peers without BIRD mode.
	in = strings.Replace(twoRegions, "  - name: us\n", "  - name: us\n    bgp: {asn: 65001, externalPeers: [{name: r1, address: 192.0.2.1, asn: 65001}]}\n", 1)
	in = strings.Replace(in, "  - name: eu\n", "  - name: eu\n    bgp: {asn: 65001}\n", 1)
	_, err = Parse([]byte(in + "routing:\n  bgp: true\n"))
	if diff := cmp.Diff([]string{"regions[1].bgp.externalPeers[0].asn", "regions[1].bgp.asn"}, paths(err)); diff != "" {
		t.Errorf("(-want +got):\n%s\n%v", diff, err)
	}
	in = strings.Replace(twoRegions, "  - name: us\n", "  - name: us\n    bgp: {externalPeers: [{name: r1, address: 192.0.2.1, asn: 65009}]}\n", 1)
	_, err = Parse([]byte(in))
	if diff := cmp.Diff([]string{"regions[1].bgp.externalPeers"}, paths(err)); diff != "" {
		t.Errorf("external peers without BIRD mode (-want +got):\n%s\n%v", diff, err)
	}
}

// TestIssue15BIRDModeWithIPv6: BIRD mode announces IPv6 too (an IPv6
// channel on every session), so a mesh with an IPv6 overlay and IPv6 pods,
// or an IPv6 underlay, is no longer refused.
func TestIssue15BIRDModeWithIPv6(t *testing.T) {
	in := strings.Replace(twoRegions, "  podIPv4: [10.0.0.0/8]\n", "  podIPv4: [10.0.0.0/8]\n  podIPv6: [fd00::/48]\n  overlayIPv6: fd7a::/48\n", 1) + "routing:\n  bgp: true\n"
	if _, err := Parse([]byte(in)); err != nil {
		t.Errorf("BIRD mode with an IPv6 overlay and IPv6 pods: %v", err)
	}
	if _, err := Parse([]byte(in + "underlay: {family: ipv6}\n")); err != nil {
		t.Errorf("BIRD mode over an IPv6 underlay: %v", err)
	}
}
