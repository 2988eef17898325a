package plan

import (
	"fmt"
	"math"
	"math/big"
	"net/netip"
)

func usage(name string, p netip.Prefix, used *big.Int) Utilization {
	total := sizeBig(hostBits(p))
	pct, _ := new(big.Rat).SetFrac(new(big.Int).Mul(used, big.NewInt(10000)), total).Float64()
	return Utilization{Range: name, Prefix: p.String(), Used: used.String(), Total: total.String(), Percent: math.Round(pct) / 100}
}

// utilization reports every range: supernets, region and cluster overlay
// blocks, and cluster pod CIDRs (by maxNodes and maxPods).
func (c *computer) utilization() {
	a := c.p.Addressing
	regionsV4 := new(big.Int)
	podV4 := map[netip.Prefix]*big.Int{}
	podV6 := map[netip.Prefix]*big.Int{}
	for _, s := range a.PodIPv4 {
		podV4[s] = new(big.Int)
	}
	for _, s := range a.PodIPv6 {
		podV6[s] = new(big.Int)
	}
	add := func(m map[netip.Prefix]*big.Int, p netip.Prefix) {
		for s, n := range m {
			if contains(s, p) {
				n.Add(n, sizeBig(hostBits(p)))
			}
		}
	}
	var rows []Utilization
	for _, r := range c.p.Regions {
		regionsV4.Add(regionsV4, sizeBig(hostBits(r.OverlayIPv4)))
		inRegion := sizeBig(hostBits(r.InfraIPv4))
		for _, cl := range r.Clusters {
			inRegion.Add(inRegion, sizeBig(hostBits(cl.OverlayIPv4)))
		}
		rows = append(rows, usage(fmt.Sprintf("region %s overlay", r.Name), r.OverlayIPv4, inRegion))
		for _, cl := range r.Clusters {
			rows = append(rows, usage(fmt.Sprintf("cluster %s/%s nodes", r.Name, cl.Name), cl.OverlayIPv4, big.NewInt(int64(cl.MaxNodes))))
			if cl.PodIPv4.IsValid() {
				add(podV4, cl.PodIPv4)
				rows = append(rows, usage(fmt.Sprintf("cluster %s/%s pods IPv4", r.Name, cl.Name), cl.PodIPv4, big.NewInt(int64(cl.MaxPods))))
			}
			if cl.PodIPv6.IsValid() {
				add(podV6, cl.PodIPv6)
				rows = append(rows, usage(fmt.Sprintf("cluster %s/%s pods IPv6", r.Name, cl.Name), cl.PodIPv6, big.NewInt(int64(cl.MaxPods))))
			}
		}
	}
	out := []Utilization{usage("overlay IPv4 (regions)", a.OverlayIPv4, regionsV4)}
	for _, s := range a.PodIPv4 {
		out = append(out, usage("pod IPv4 supernet", s, podV4[s]))
	}
	for _, s := range a.PodIPv6 {
		out = append(out, usage("pod IPv6 supernet", s, podV6[s]))
	}
	c.p.Usage = append(out, rows...)
}
