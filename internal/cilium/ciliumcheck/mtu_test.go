package ciliumcheck

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	ciliummtu "github.com/cilium/cilium/pkg/mtu"

	"github.com/statemesh/statemesh/internal/cilium"
	"github.com/statemesh/statemesh/internal/mtu"
)

// routeMTU is the MTU Cilium gives pods' routes from its cilium-config, by
// its own arithmetic (pkg/mtu, as its mtu cell calls it: encapsulation when
// routing-mode is tunnel, over IPv6 when underlay-protocol says so;
// WireGuard or IPsec when enabled).
func routeMTU(t *testing.T, cfg map[string]string) int {
	t.Helper()
	base, err := strconv.Atoi(cfg["mtu"])
	if err != nil {
		t.Fatalf("cilium-config mtu %q: %v", cfg["mtu"], err)
	}
	tunnel := cfg["routing-mode"] == "tunnel"
	c := ciliummtu.NewConfiguration(ciliummtu.EncryptionDefaultAuthKeyLength, cfg["enable-ipsec"] == "true", tunnel,
		cfg["enable-wireguard"] == "true", tunnel && cfg["underlay-protocol"] == "ipv6")
	return c.Calculate(base).RouteMTU
}

// TestPodMTUIsCiliums (issue 18 item 2): for each routing mode, with and
// without Cilium's WireGuard, with Geneve options, the MTU Cilium computes
// for pods from the rendered values (its chart's cilium-config, its pkg/mtu)
// is exactly the plan's pod MTU, for nodes and for operator nodes (their
// CiliumNodeConfig mtu). Before the fix, Geneve with 8 option bytes gave
// 1390 for a planned 1382, and cilium.wireguard 1345 for a planned 1380.
func TestPodMTUIsCiliums(t *testing.T) {
	base := readExample(t, "small.yaml")
	for _, mode := range []struct {
		routing string
		options int
	}{{"native", 0}, {"vxlan", 0}, {"geneve", 0}, {"geneve", 8}, {"geneve", 252}} {
		for _, wg := range []bool{false, true} {
			name := fmt.Sprintf("%s+%d-options/cilium-wireguard=%v", mode.routing, mode.options, wg)
			t.Run(name, func(t *testing.T) {
				c := fmt.Sprintf("cilium:\n  routingMode: %s\n  wireguard: %v\n", mode.routing, wg)
				if mode.options > 0 {
					c += fmt.Sprintf("  geneveOptionBytes: %d\n", mode.options)
				}
				text := strings.Replace(base, "cilium:\n  routingMode: native\n", c, 1)
				if text == base && (mode.routing != "native" || wg) {
					t.Fatal("could not set the cilium section of examples/small.yaml")
				}
				m, p := load(t, text)
				for _, key := range clusters(p) {
					rv, err := cilium.ClusterValuesFor(m, p, key)
					if err != nil {
						t.Fatal(err)
					}
					region, name, _ := strings.Cut(key, "/")
					pc, _ := p.Cluster(region, name)
					cfg := ciliumConfig(t, rv)
					if got := routeMTU(t, cfg); got != pc.PodMTU {
						t.Errorf("%s: Cilium gives pods %d (mtu %s, routing %s, wireguard %s), the plan says %d",
							key, got, cfg["mtu"], cfg["routing-mode"], cfg["enable-wireguard"], pc.PodMTU)
					}
					// Operator nodes: the CiliumNodeConfig replaces mtu.
					if nc := cilium.OperatorNodeConfig(rv); nc != nil {
						op := map[string]string{}
						for k, v := range cfg {
							op[k] = v
						}
						op["mtu"] = nc.Spec.Defaults["mtu"]
						if got := routeMTU(t, op); got != pc.OperatorPodMTU {
							t.Errorf("%s operator nodes: Cilium gives pods %d, the plan says %d", key, got, pc.OperatorPodMTU)
						}
					}
				}
			})
		}
	}
}

// TestCiliumWireGuardOverhead: StateMesh's figure for Cilium's WireGuard is
// Cilium's own.
func TestCiliumWireGuardOverhead(t *testing.T) {
	if mtu.CiliumWireGuardOverhead != ciliummtu.WireguardOverhead {
		t.Errorf("mtu.CiliumWireGuardOverhead = %d, Cilium's is %d", mtu.CiliumWireGuardOverhead, ciliummtu.WireguardOverhead)
	}
	if e := mtu.EncapOverhead(mtu.VXLAN, mtu.IPv4, 0); e != ciliummtu.TunnelOverheadIPv4 {
		t.Errorf("VXLAN over IPv4: %d, Cilium's is %d", e, ciliummtu.TunnelOverheadIPv4)
	}
	if e := mtu.EncapOverhead(mtu.VXLAN, mtu.IPv6, 0); e != ciliummtu.TunnelOverheadIPv6 {
		t.Errorf("VXLAN over IPv6: %d, Cilium's is %d", e, ciliummtu.TunnelOverheadIPv6)
	}
}
