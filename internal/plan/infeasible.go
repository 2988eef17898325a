package plan

import (
	"fmt"
	"math/big"
	"net/netip"
	"strings"

	"github.com/statemesh/statemesh/internal/spec"
)

// RFC1918Addresses is the number of private IPv4 addresses (10/8,
// 172.16/12, 192.168/16).
const RFC1918Addresses = 1<<24 + 1<<20 + 1<<16

// InfeasibleError says why a spec cannot be planned, with numbers and ways
// out.
type InfeasibleError struct {
	Problems []Problem `json:"problems"`
}

// Problem is one reason a plan is infeasible.
type Problem struct {
	// Subject names what does not fit.
	Subject string `json:"subject"`
	// Detail explains the demand.
	Detail string `json:"detail"`
	// Needed and Available quantify it.
	Needed    string `json:"needed"`
	Available string `json:"available"`
	// Fits says how much of the demand would fit, when that is meaningful.
	Fits string `json:"fits,omitempty"`
	// WaysOut are concrete changes to the spec that make it feasible.
	WaysOut []string `json:"waysOut"`
}

func (e *InfeasibleError) add(p Problem) { e.Problems = append(e.Problems, p) }

func (e *InfeasibleError) Error() string {
	var b strings.Builder
	b.WriteString("the mesh cannot be planned:")
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n- %s: %s\n    needed:    %s\n    available: %s", p.Subject, p.Detail, p.Needed, p.Available)
		if p.Fits != "" {
			fmt.Fprintf(&b, "\n    fits:      %s", p.Fits)
		}
		if len(p.WaysOut) > 0 {
			b.WriteString("\n    ways out:")
			for i, w := range p.WaysOut {
				fmt.Fprintf(&b, "\n      %d. %s", i+1, w)
			}
		}
	}
	return b.String()
}

func sizeBig(hostBits int) *big.Int { return new(big.Int).Lsh(big.NewInt(1), uint(hostBits)) }

func countBig(n *big.Int) string {
	if n.BitLen() > 64 {
		return fmt.Sprintf("2^%d", n.BitLen()-1) + approx(n)
	}
	return spec.Count(n.Uint64())
}

func approx(n *big.Int) string {
	// Only exact powers of two reach here in practice; say so when not.
	if new(big.Int).Lsh(big.NewInt(1), uint(n.BitLen()-1)).Cmp(n) == 0 {
		return ""
	}
	return "+"
}

// blocksFit counts how many aligned blocks of hostBits fit in supers.
func blocksFit(supers []netip.Prefix, hb int) *big.Int {
	n := new(big.Int)
	for _, s := range supers {
		if d := hostBits(s) - hb; d >= 0 {
			n.Add(n, sizeBig(d))
		}
	}
	return n
}

func (c *computer) podProblem(v4 bool, supers []netip.Prefix, all, failed []*Cluster) Problem {
	total, fam, field := 128, "IPv6", "addressing.podIPv6"
	if v4 {
		total, fam, field = 32, "IPv4", "addressing.podIPv4"
	}
	needed := new(big.Int)
	for _, cl := range all {
		needed.Add(needed, sizeBig(spec.ClusterPodBits(cl.MaxNodes, cl.MaxPodsPerNode)))
	}
	avail := new(big.Int)
	for _, s := range supers {
		avail.Add(avail, sizeBig(hostBits(s)))
	}
	t := failed[0]
	hb := spec.ClusterPodBits(t.MaxNodes, t.MaxPodsPerNode)
	block := spec.PodBlockBits(t.MaxPodsPerNode)
	p := Problem{
		Subject: fam + " pod CIDRs",
		Detail: fmt.Sprintf("%d clusters need unique %s pod CIDRs; %s/%s needs a /%d (%s nodes × /%d blocks for %d pods per node = %s addresses)",
			len(all), fam, t.Region, t.Name, total-hb, spec.Count(uint64(t.MaxNodes)), total-block, t.MaxPodsPerNode, countBig(sizeBig(hb))),
		Needed:    countBig(needed) + " addresses",
		Available: fmt.Sprintf("%s addresses in %s (%s)", countBig(avail), field, joinP(supers)),
		Fits:      fmt.Sprintf("%d of %d clusters", len(all)-len(failed), len(all)),
	}
	if v4 {
		if needed.Cmp(big.NewInt(RFC1918Addresses)) > 0 {
			p.Available += fmt.Sprintf("; all private IPv4 space (RFC 1918) holds only %s, so no choice of IPv4 ranges can give every cluster a unique one",
				spec.Count(RFC1918Addresses))
		}
		rfc := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"), netip.MustParsePrefix("192.168.0.0/16")}
		ipv6 := "give pods IPv6 addresses: replace addressing.podIPv4 with addressing.podIPv6 (e.g. fd00:10::/48, which holds " +
			countBig(blocksFit([]netip.Prefix{netip.MustParsePrefix("fd00:10::/48")}, hb)) + " such clusters)"
		if len(c.m.Addressing.PodIPv6) > 0 {
			// Already dual-stack: the IPv6 half is there.
			ipv6 = "IPv6-only pods: remove addressing.podIPv4 (the mesh already has addressing.podIPv6)"
		}
		p.WaysOut = append(p.WaysOut, ipv6,
			fmt.Sprintf("dual-stack (addressing.podIPv4 and addressing.podIPv6) still needs a unique IPv4 pod CIDR per cluster: it works for at most %s clusters of this size in all of RFC 1918",
				countBig(blocksFit(rfc, hb))))
		// Fewer pods per node: the smallest block that still reaches maxPods.
		perNode := (t.MaxPods + t.MaxNodes - 1) / t.MaxNodes
		if nb := spec.PodBlockBits(perNode); nb < block {
			nhb := spec.ClusterPodBits(t.MaxNodes, perNode)
			fits := blocksFit(supers, nhb)
			verdict := "then all fit"
			if fits.Cmp(big.NewInt(int64(len(all)))) < 0 {
				verdict = fmt.Sprintf("still only %s of %d fit", countBig(fits), len(all))
			}
			p.WaysOut = append(p.WaysOut, fmt.Sprintf("lower maxPodsPerNode to %d (the fewest that still hold maxPods %s on %s nodes): each cluster needs a /%d and %s",
				perNode, spec.Count(uint64(t.MaxPods)), spec.Count(uint64(t.MaxNodes)), total-nhb, verdict))
		}
		p.WaysOut = append(p.WaysOut, fmt.Sprintf("plan fewer or smaller clusters: at most %s clusters of this size fit in %s", countBig(blocksFit(supers, hb)), joinP(supers)))
		return p
	}
	p.WaysOut = append(p.WaysOut, fmt.Sprintf("use a larger %s (a /48 holds %s clusters of this size)", field,
		countBig(blocksFit([]netip.Prefix{netip.MustParsePrefix("fd00:10::/48")}, hb))))
	return p
}

func joinP(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
