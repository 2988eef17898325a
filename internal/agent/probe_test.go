package agent

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
)

func TestProbeTargetsRotateWithinBounds(t *testing.T) {
	m := netmap.Map{Self: netmap.Self{Role: netmap.RoleGateway}}
	for i := range 150 {
		m.Peers = append(m.Peers, netmap.Peer{Name: fmt.Sprintf("gw%03d", i), Role: netmap.RoleGateway})
	}
	m.Peers = append(m.Peers, netmap.Peer{Name: "node", Role: netmap.RoleNode})
	seen := map[string]int{}
	for round := range 3 { // ceil(150/64) rounds cover every gateway
		ts := probeTargets(m, round)
		if len(ts) != maxProbeTargets {
			t.Fatalf("round %d: %d targets, want %d", round, len(ts), maxProbeTargets)
		}
		for _, p := range ts {
			if p.Role != netmap.RoleGateway {
				t.Fatalf("probes a %s", p.Role)
			}
			seen[p.Name]++
		}
	}
	if len(seen) != 150 {
		t.Errorf("3 rounds measured %d of 150 gateways", len(seen))
	}
	m.Self.Role = netmap.RoleNode
	if ts := probeTargets(m, 0); len(ts) != maxNodeTargets {
		t.Errorf("a node probes %d gateways, want %d", len(ts), maxNodeTargets)
	}
	// Nodes spread their first rounds over the gateways.
	first := map[string]bool{}
	for i := range 50 {
		m.Self.Name = fmt.Sprintf("n%d", i)
		first[probeTargets(m, 0)[0].Name] = true
	}
	if len(first) < 20 {
		t.Errorf("50 nodes start at only %d different gateways", len(first))
	}
	m.Peers = m.Peers[:2]
	if ts := probeTargets(m, 7); len(ts) != 2 {
		t.Errorf("few gateways: %+v", ts)
	}
}

func TestHostAddrPrefersIPv4ThenIPv6(t *testing.T) {
	pf := netip.MustParsePrefix
	for _, c := range []struct {
		allowed []netip.Prefix
		want    string
	}{
		{[]netip.Prefix{pf("fd7a::5/128"), pf("100.64.0.5/32"), pf("10.1.0.0/25")}, "100.64.0.5"},
		{[]netip.Prefix{pf("fd00:10::/121"), pf("fd7a::5/128")}, "fd7a::5"},
		{[]netip.Prefix{pf("10.1.0.0/25")}, "invalid IP"},
	} {
		if got, _ := hostAddr(netmap.Peer{AllowedIPs: c.allowed}); got.String() != c.want {
			t.Errorf("%v: probe address %s, want %s", c.allowed, got, c.want)
		}
	}
}
