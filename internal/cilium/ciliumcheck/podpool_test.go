package ciliumcheck

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/cilium/pkg/ipam/service/ipallocator"

	"github.com/statemesh/statemesh/internal/spec"
)

// ciliumOwnAddresses are the addresses the Cilium agent takes from its
// node's pod range before any pod: the router address (cilium_host) and
// the health endpoint's (endpointHealthChecking, on by default).
const ciliumOwnAddresses = 2

// podsInBlock is how many pods Cilium's cluster-pool IPAM places in a
// node's block: what its allocator (ipallocator.NewCIDRRange, as
// hostScopeAllocator builds it) offers, less the agent's own addresses.
func podsInBlock(p netip.Prefix) int {
	return ipallocator.NewCIDRRange(p).Free() - ciliumOwnAddresses
}

// TestPodBlocksHoldMaxPodsPerNode (issue 18 item 3): every node block the
// plan gives holds maxPodsPerNode pods by Cilium's own allocator — for
// every maxPodsPerNode from 1 to 1024 in both families, and for every
// cluster of the examples. Before the fix, 64 pods got a /26 (60 pods) and
// 1 pod a /32 (none).
func TestPodBlocksHoldMaxPodsPerNode(t *testing.T) {
	for ppn := 1; ppn <= 1024; ppn++ {
		b := spec.PodBlockBits(ppn)
		for _, p := range []netip.Prefix{
			netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), 32-b),
			netip.PrefixFrom(netip.MustParseAddr("fd00::"), 128-b),
		} {
			if got := podsInBlock(p); got < ppn {
				t.Errorf("maxPodsPerNode %d: block %s holds %d pods in Cilium", ppn, p, got)
			}
			if got := spec.PodsPerBlock(b); got != podsInBlock(p) {
				t.Errorf("spec.PodsPerBlock(%d) = %d, Cilium places %d in %s", b, got, podsInBlock(p), p)
			}
		}
	}
	for _, file := range []string{"small.yaml", "policy.yaml", "dual-stack.yaml", "vxlan.yaml", "design-limit-ipv6.yaml"} {
		text := readExample(t, file)
		if strings.Contains(text, "\n---") {
			continue
		}
		_, p := load(t, text)
		for _, r := range p.Regions {
			for _, c := range r.Clusters {
				for _, blk := range []netip.Prefix{
					prefixOrZero(c.PodIPv4, c.NodeMaskIPv4), prefixOrZero(c.PodIPv6, c.NodeMaskIPv6),
				} {
					if blk.IsValid() && podsInBlock(blk) < c.MaxPodsPerNode {
						t.Errorf("%s: %s/%s node block %s holds %d pods in Cilium, maxPodsPerNode is %d", file, r.Name, c.Name, blk, podsInBlock(blk), c.MaxPodsPerNode)
					}
				}
			}
		}
	}
}

func prefixOrZero(cluster netip.Prefix, mask int) netip.Prefix {
	if !cluster.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(cluster.Addr(), mask)
}
