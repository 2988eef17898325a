package plan

import (
	"fmt"

	"github.com/statemesh/statemesh/internal/mtu"
	"github.com/statemesh/statemesh/internal/spec"
)

// Roles in the order the plan lists them.
var roles = []string{"gateway", "node", "operator"}

type hop struct {
	mtu int
	why string
}

func (h hop) min(o hop) hop {
	if o.mtu < h.mtu {
		return o
	}
	return h
}

// mtus computes the MTU of every role in every region and the pod MTU of
// every cluster. A role's WireGuard MTU is the smallest MTU left on any path
// its traffic may take:
//   - its own underlay minus WireGuard's overhead on it;
//   - the region's nodes and gateways (traffic to and through them);
//   - with several regions, the WAN between gateways and every other
//     region's nodes and gateways (traffic is forwarded across them).
//
// Operator nodes get their own line but do not lower anyone else's: the TCP
// MSS they advertise covers traffic towards them. A cluster's pod MTU follows
// its nodes; operator nodes get their own pod MTU (rendered for Cilium as a
// per-node override) when it differs.
func (c *computer) mtus() {
	own := func(ri int, role string) hop {
		u, fam := c.m.RoleUnderlay(ri, role)
		return hop{u - mtu.WireGuardOverhead(fam), fmt.Sprintf("%s underlay of %s (%d, %s)", role, c.m.Regions[ri].Name, u, fam)}
	}
	regional := func(ri int) hop { return own(ri, "node").min(own(ri, "gateway")) }
	multi := len(c.m.Regions) > 1
	wan := hop{c.m.Underlay.WAN.MTU - mtu.WireGuardOverhead(c.m.Underlay.WAN.Family),
		fmt.Sprintf("WAN between regions (%d, %s)", c.m.Underlay.WAN.MTU, c.m.Underlay.WAN.Family)}
	for ri := range c.p.Regions {
		r := &c.p.Regions[ri]
		path := regional(ri)
		if multi {
			path = path.min(wan)
			for rj := range c.m.Regions {
				if rj != ri {
					path = path.min(regional(rj))
				}
			}
		}
		r.MTU = nil
		for _, role := range roles {
			u, fam := c.m.RoleUnderlay(ri, role)
			h := own(ri, role)
			eff := h.min(path)
			why := eff.why
			if eff == h {
				why = "own underlay"
			}
			r.MTU = append(r.MTU, RoleMTU{Role: role, UnderlayMTU: u, UnderlayFamily: fam,
				WireGuardOverhead: mtu.WireGuardOverhead(fam), WireGuardMTU: eff.mtu, LimitedBy: why})
		}
		node, _ := r.Role("node")
		op, _ := r.Role("operator")
		for ci := range r.Clusters {
			cl := &r.Clusters[ci]
			payload := mtu.IPv4
			switch {
			case cl.PodIPv6.IsValid() && cl.PodIPv4.IsValid():
				payload = mtu.Dual
			case cl.PodIPv6.IsValid():
				payload = mtu.IPv6
			}
			cl.PodMTU = c.podMTU(node.WireGuardMTU)
			if o := c.podMTU(op.WireGuardMTU); o != cl.PodMTU {
				cl.OperatorPodMTU = o
			}
			for _, x := range []struct {
				role string
				pod  int
			}{{"node", cl.PodMTU}, {"operator", c.podMTU(op.WireGuardMTU)}} {
				if need := mtu.MinPayload(payload); x.pod < need {
					c.inf.add(Problem{
						Subject:   fmt.Sprintf("%s/%s pod MTU on %s nodes", r.Name, cl.Name, x.role),
						Detail:    fmt.Sprintf("%s pods need an MTU of at least %d; the overlay leaves %d after Cilium %s routing", payload, need, x.pod, c.m.Cilium.RoutingMode),
						Needed:    fmt.Sprint(need),
						Available: fmt.Sprint(x.pod),
						WaysOut:   c.mtuWaysOut(need - x.pod),
					})
				}
			}
		}
	}
}

// mtuWaysOut lists what would give pods short bytes more: only the
// settings that are not already so.
func (c *computer) mtuWaysOut(short int) []string {
	var out []string
	if c.m.Cilium.RoutingMode != spec.RoutingNative {
		out = append(out, "use cilium.routingMode: native (no encapsulation)")
	}
	if c.m.Cilium.WireGuard {
		out = append(out, "disable cilium.wireguard (the overlay already encrypts)")
	}
	return append(out, fmt.Sprintf("raise the smallest underlay MTU on the path by %d bytes", short))
}

// podMTU is what is left for pods above a WireGuard MTU.
func (c *computer) podMTU(wg int) int {
	pod := wg - mtu.EncapOverhead(c.m.Cilium.RoutingMode, mtu.IPv4, c.m.Cilium.GeneveOptionBytes)
	if c.m.Cilium.WireGuard {
		pod -= mtu.CiliumWireGuardOverhead // Cilium's own figure: its pods get this MTU
	}
	return pod
}
