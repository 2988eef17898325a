package doctor

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/mtu"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/policy"
	"github.com/statemesh/statemesh/internal/spec"
)

// Live is what a running mesh shows through the admin API.
type Live struct {
	// Mesh is the controller's spec (nil before one is applied).
	Mesh   *spec.Mesh
	Status api.Status
	Nodes  []api.Node
	Paths  []api.Path
	// ControllerTPM says whether the controller answers mutual aTLS (nil:
	// unknown).
	ControllerTPM *bool
}

// Running checks a running mesh.
func Running(l Live) []Finding {
	byName := map[string]api.Node{}
	for _, n := range l.Nodes {
		byName[n.Name] = n
	}
	var out []Finding
	out = append(out, pathMTU(l, byName)...)
	out = append(out, underlayFamily(l)...)
	out = append(out, unreachable(l.Paths)...)
	out = append(out, gateways(l)...)
	out = append(out, dataplane(l.Nodes)...)
	for _, b := range l.Status.Backends {
		if len(b.Unattested) > 0 {
			out = append(out, Finding{Severity: Warning, Check: "backend-unattested", Subject: b.Name + ": " + strings.Join(b.Unattested, ", "),
				Reason:   "these hosts are members of StateMesh's networks in " + b.Name + " but no attested StateMesh node owns their WireGuard key: they were admitted outside StateMesh",
				Evidence: fmt.Sprintf("%d unattested members in the last pass", len(b.Unattested)),
				Fix:      "run statemesh agent --attest-only --role host on them, or remove them in " + b.Name})
		}
		if b.RemovedUnattested > 0 {
			out = append(out, Finding{Severity: Warning, Check: "backend-unattested-removed", Subject: b.Name,
				Reason:   "hosts joined with a StateMesh key without being attested and were removed (device approval is off, so they got in until the next pass)",
				Evidence: fmt.Sprintf("%d hosts removed since the controller started (statemesh_netmaker_unattested_hosts_total)", b.RemovedUnattested),
				Fix:      "attest hosts before netclient joins; if these were not yours, rotate the cluster's enrollment key"})
		}
	}
	if len(l.Status.StalePeers) > 0 {
		out = append(out, Finding{Severity: Warning, Check: "stale-handshakes", Subject: strings.Join(l.Status.StalePeers, ", "),
			Reason:   "these nodes have keepalive peers whose last WireGuard handshake is over 3 minutes old: traffic to those peers is not flowing",
			Evidence: fmt.Sprintf("%d nodes report stale peers (statemesh_agent_stale_peers > 0)", len(l.Status.StalePeers)),
			Fix:      "check that the peers' endpoints are reachable over UDP from these nodes (wg show on the node lists the peer and its endpoint), and that the peer's agent runs"})
	}
	for _, n := range l.Nodes {
		skew := time.Duration(math.Abs(n.ClockSkewMillis) * float64(time.Millisecond))
		if n.ReportedAt == nil || skew < ClockSkewWarn {
			continue
		}
		sev := Warning
		if skew >= ClockSkewError {
			sev = Error
		}
		out = append(out, Finding{Severity: sev, Check: "clock-skew", Subject: n.Name,
			Reason:   "node certificates are backdated only 5 minutes and renewed by the node's clock; a skewed clock makes fresh certificates look not yet valid or renews too late",
			Evidence: fmt.Sprintf("the node's clock is %+.1f s off the controller's at its last report", n.ClockSkewMillis/1000),
			Fix:      "run NTP (chrony or systemd-timesyncd) on the node"})
	}
	out = append(out, weakNextToSensitive(l)...)
	if m := l.Mesh; m != nil && m.Attestation != nil && m.Attestation.Controller != nil && l.ControllerTPM != nil && !*l.ControllerTPM {
		out = append(out, Finding{Severity: Error, Check: "mutual-atls", Subject: "controller",
			Reason:   "the spec asks agents to attest the controller (attestation.controller), but the controller runs without a TPM: agents given the spec refuse to enroll and take no map from it",
			Evidence: "GET /v1/attest/controller answers not_found",
			Fix:      "start the controller with --tpm (its EK digest is logged at start), or remove attestation.controller"})
	}
	if len(l.Status.Quarantined) > 0 {
		out = append(out, Finding{Severity: Info, Check: "quarantined", Subject: strings.Join(l.Status.Quarantined, ", "),
			Reason:   "quarantined nodes are cut off from every peer",
			Evidence: fmt.Sprintf("%d nodes not active (statemesh get nodes shows the reason)", len(l.Status.Quarantined)),
			Fix:      "fix the cause and run statemesh node release NAME, or statemesh node remove NAME"})
	}
	Sort(out)
	return out
}

// pathMTU reports paths that carried less than the planned MTU, grouped
// by the underlay they cross: the WAN between two regions, or a region's
// own network. When every low path of a group shares one host, the
// finding names it: that host's link is the likely culprit.
func pathMTU(l Live, byName map[string]api.Node) []Finding {
	type group struct {
		wan      bool
		regions  []string
		paths    []api.Path
		smallest int
	}
	groups := map[string]*group{}
	for _, p := range l.Paths {
		if p.Loss >= 1 || p.PathMTU <= 0 || p.PathMTU >= p.PlannedMTU {
			continue
		}
		wan := p.FromRegion != p.Region
		regions := []string{p.FromRegion, p.Region}
		slices.Sort(regions)
		regions = slices.Compact(regions)
		key := strings.Join(regions, "|")
		g := groups[key]
		if g == nil {
			g = &group{wan: wan, regions: regions}
			groups[key] = g
		}
		g.paths = append(g.paths, p)
		if g.smallest == 0 || p.PathMTU < g.smallest {
			g.smallest = p.PathMTU
		}
	}
	var out []Finding
	for _, key := range slices.Sorted(maps.Keys(groups)) {
		g := groups[key]
		var ev []string
		for i, p := range g.paths {
			if i == 3 {
				ev = append(ev, fmt.Sprintf("and %d more", len(g.paths)-3))
				break
			}
			ev = append(ev, fmt.Sprintf("%s → %s: %d bytes crossed, planned %d", p.From, p.Peer, p.PathMTU, p.PlannedMTU))
		}
		subject := "region " + g.regions[0]
		if g.wan {
			subject = "WAN " + strings.Join(g.regions, " ↔ ")
		}
		if h := commonHost(g.paths); h != "" {
			subject += " via " + h
		}
		f := Finding{Severity: Error, Check: "path-mtu", Subject: subject,
			Reason:   "packets of the planned size are dropped on this path: large transfers stall (the DF probes found the largest size that crosses)",
			Evidence: strings.Join(ev, "; ")}
		f.Fix = mtuFix(l.Mesh, g.wan, g.regions[0], g.smallest, commonHost(g.paths), byName, observedFamily(g.paths, g.wan, byName))
		out = append(out, f)
	}
	return out
}

// mtuFix names the spec field to lower (to the link's real MTU: the
// probed inner MTU plus WireGuard's overhead) or the link to repair.
// WireGuard's overhead is that of the family the paths' endpoints really
// use (observed, "" when unknown), else the one the spec plans for the
// probing role; where the two differ, the fix names the family too: the
// planner subtracts the overhead of the family the spec says.
func mtuFix(m *spec.Mesh, wan bool, region string, pathMTU int, host string, byName map[string]api.Node, observed string) string {
	family := spec.DefaultFamily
	field, familyField := "underlay.mtu", "underlay.family"
	if m != nil {
		family = m.Underlay.Family
		if wan {
			family = m.Underlay.WAN.Family
			field, familyField = "underlay.wan.mtu", "underlay.wan.family"
		} else {
			for i, r := range m.Regions {
				if r.Name == region {
					family = r.UnderlayFamily
					field, familyField = fmt.Sprintf("regions[%d].underlayMTU", i), fmt.Sprintf("regions[%d].underlayFamily", i)
				}
			}
		}
	} else if wan {
		field, familyField = "underlay.wan.mtu", "underlay.wan.family"
	}
	planned := family
	if observed != "" {
		family = observed
	}
	// WireGuard pads each packet to 16 bytes (up to the interface MTU), so
	// the probes bound the link's MTU to 16 bytes: at least link, below
	// link+16. The lower bound is the safe setting.
	link := pathMTU + mtu.WireGuardOverhead(family)
	set := fmt.Sprintf("%s: %d", field, link)
	if family != planned {
		set += fmt.Sprintf(" and %s: %s (the endpoints use %s, the spec plans %s)", familyField, family, family, planned)
	}
	fix := fmt.Sprintf("fix the link to carry the planned MTU, or set %s and re-apply the spec so the planner lowers the interfaces to %d (the link carries %d–%d bytes: %d + %d of WireGuard over %s, up to 15 of padding; use the exact figure if you know it)",
		set, pathMTU, link, link+15, pathMTU, mtu.WireGuardOverhead(family), family)
	if host != "" {
		role := ""
		if n, ok := byName[host]; ok {
			role = n.Role + " "
		}
		fix = fmt.Sprintf("every low path goes through %s%s: check its %s link MTU first (ip link). Otherwise %s", role, host, map[bool]string{true: "WAN", false: "underlay"}[wan], fix)
	}
	return fix
}

// endpointFamily is the family of a node's WireGuard endpoint (its public
// one on the WAN when it has one), "" when unknown.
func endpointFamily(n api.Node, wan bool) string {
	ep := n.Endpoint
	if wan && n.PublicEndpoint != "" {
		ep = n.PublicEndpoint
	}
	a, err := netip.ParseAddrPort(ep)
	if err != nil {
		return ""
	}
	if a.Addr().Unmap().Is4() {
		return mtu.IPv4
	}
	return mtu.IPv6
}

// observedFamily is the family every known endpoint of the paths uses, ""
// when none is known or they differ.
func observedFamily(ps []api.Path, wan bool, byName map[string]api.Node) string {
	fam := ""
	for _, p := range ps {
		for _, name := range []string{p.From, p.Peer} {
			n, ok := byName[name]
			if !ok {
				continue
			}
			switch f := endpointFamily(n, wan); {
			case f == "":
			case fam == "":
				fam = f
			case fam != f:
				return ""
			}
		}
	}
	return fam
}

// underlayFamily compares the family of each node's WireGuard endpoint
// with the family the spec plans for its role and region: the planner
// subtracts WireGuard's overhead on that family (60 bytes over IPv4, 80
// over IPv6) from the underlay MTU. A node on an IPv6 underlay planned as
// IPv4 gets an interface MTU 20 bytes too large: its full-size packets
// are fragmented or dropped. One planned as IPv6 on IPv4 gives up 20
// bytes per packet for nothing.
func underlayFamily(l Live) []Finding {
	const wanRole = "gateway WAN"
	m := l.Mesh
	if m == nil {
		return nil
	}
	type key struct{ region, role, planned, observed string }
	groups := map[key][]string{}
	ri := map[string]int{}
	for i, r := range m.Regions {
		ri[r.Name] = i
	}
	for _, n := range l.Nodes {
		i, ok := ri[n.Region]
		if !ok {
			continue
		}
		if obs := endpointFamily(n, false); obs != "" {
			if _, planned := m.RoleUnderlay(i, n.Role); planned != obs {
				k := key{n.Region, n.Role, planned, obs}
				groups[k] = append(groups[k], n.Name)
			}
		}
		if n.PublicEndpoint != "" && len(m.Regions) > 1 {
			if obs := endpointFamily(n, true); obs != "" && obs != m.Underlay.WAN.Family {
				k := key{n.Region, wanRole, m.Underlay.WAN.Family, obs}
				groups[k] = append(groups[k], n.Name)
			}
		}
	}
	var out []Finding
	for _, k := range slices.SortedFunc(maps.Keys(groups), func(a, b key) int {
		return strings.Compare(a.region+"/"+a.role+"/"+a.observed, b.region+"/"+b.role+"/"+b.observed)
	}) {
		names := groups[k]
		slices.Sort(names)
		po, oo := mtu.WireGuardOverhead(k.planned), mtu.WireGuardOverhead(k.observed)
		f := Finding{Check: "underlay-family", Subject: fmt.Sprintf("%s nodes of region %s", k.role, k.region),
			Evidence: fmt.Sprintf("%d %s nodes have %s WireGuard endpoints, the spec plans %s: %s", len(names), k.role, k.observed, k.planned, strings.Join(firstN(names, 5), ", ")),
			Fix: fmt.Sprintf("set regions[%d].roles.%s.underlayFamily: %s (or the region's underlayFamily when all its roles use %s) and re-apply the spec",
				ri[k.region], k.role, k.observed, k.observed)}
		if k.role == wanRole {
			f.Subject = fmt.Sprintf("gateways of region %s on the WAN", k.region)
			f.Evidence = fmt.Sprintf("%d gateways have %s public endpoints, the spec plans the WAN as %s: %s", len(names), k.observed, k.planned, strings.Join(firstN(names, 5), ", "))
			f.Fix = fmt.Sprintf("set underlay.wan.family: %s and re-apply the spec", k.observed)
		}
		if oo > po {
			f.Severity = Error
			f.Reason = fmt.Sprintf("WireGuard over %s takes %d bytes per packet, the plan subtracted %d: the interface MTU is %d bytes too large for this underlay, and full-size packets are fragmented or dropped", k.observed, oo, po, oo-po)
		} else {
			f.Severity = Info
			f.Reason = fmt.Sprintf("WireGuard over %s takes %d bytes per packet, the plan subtracted %d: every packet gives up %d bytes of MTU for nothing", k.observed, oo, po, po-oo)
		}
		out = append(out, f)
	}
	return out
}

// commonHost is the node every path starts or ends at, if there is one
// and the paths are more than one.
func commonHost(ps []api.Path) string {
	if len(ps) < 2 {
		return ""
	}
	for _, cand := range []string{ps[0].From, ps[0].Peer} {
		all := true
		for _, p := range ps[1:] {
			if p.From != cand && p.Peer != cand {
				all = false
				break
			}
		}
		if all {
			return cand
		}
	}
	return ""
}

func unreachable(paths []api.Path) []Finding {
	by := map[string][]string{}
	for _, p := range paths {
		if p.Loss >= 1 {
			by[p.Peer] = append(by[p.Peer], p.From)
		}
	}
	var out []Finding
	for _, peer := range slices.Sorted(maps.Keys(by)) {
		from := by[peer]
		out = append(out, Finding{Severity: Warning, Check: "unreachable-gateway", Subject: peer,
			Reason:   "probes through the overlay to this gateway got no answer",
			Evidence: fmt.Sprintf("%d nodes lost every probe: %s", len(from), strings.Join(firstN(from, 5), ", ")),
			Fix:      "check the gateway's agent and its WireGuard port; the controller moves its clusters to another gateway when it stops reporting"})
	}
	return out
}

func gateways(l Live) []Finding {
	var out []Finding
	planned := map[string]int{}
	if l.Mesh != nil {
		for _, r := range l.Mesh.Regions {
			planned[r.Name] = r.Gateways
		}
	}
	for _, r := range l.Status.Regions {
		healthy := 0
		load := map[string]int{}
		for _, g := range r.Gateways {
			if g.Healthy {
				healthy++
				load[g.Name] = len(g.Clusters)
			}
		}
		switch {
		case len(r.Clusters) > 0 && healthy == 0:
			out = append(out, Finding{Severity: Error, Check: "gateway-health", Subject: "region " + r.Name,
				Reason:   "no healthy gateway: the region's clusters cannot reach other regions",
				Evidence: fmt.Sprintf("%d gateways enrolled, none healthy", len(r.Gateways)),
				Fix:      "start or repair a gateway (statemesh status lists them; a gateway is healthy while it reports every second)"})
		case healthy == 1 && (planned[r.Name] > 1 || len(r.Gateways) > 1):
			out = append(out, Finding{Severity: Warning, Check: "gateway-health", Subject: "region " + r.Name,
				Reason:   "one healthy gateway left: the next failure cuts the region off",
				Evidence: fmt.Sprintf("1 of %d gateways healthy (%d planned)", len(r.Gateways), planned[r.Name]),
				Fix:      "bring the other gateways back (statemesh status shows which are unhealthy)"})
		}
		if healthy < 2 || len(r.Clusters) < 2*healthy {
			continue
		}
		fair := float64(len(r.Clusters)) / float64(healthy)
		for _, g := range slices.Sorted(maps.Keys(load)) {
			if float64(load[g]) > ImbalanceFactor*fair {
				out = append(out, Finding{Severity: Info, Check: "gateway-load", Subject: g,
					Reason:   "the gateway carries well over its share of the region's clusters",
					Evidence: fmt.Sprintf("%d of %d clusters on %d healthy gateways (fair share %.1f)", load[g], len(r.Clusters), healthy, fair),
					Fix:      "add a gateway to the region (rendezvous hashing moves only its share of clusters to it)"})
			}
		}
	}
	return out
}

// weakNextToSensitive finds weak nodes in clusters where strong nodes
// are members of a sensitive segment.
func weakNextToSensitive(l Live) []Finding {
	if l.Mesh == nil || l.Mesh.Policy == nil {
		return nil
	}
	pol, err := policy.Compile(l.Mesh.Policy)
	if err != nil || pol == nil {
		return nil
	}
	weak := map[string][]string{}
	for _, n := range l.Nodes {
		if n.Class == netmap.ClassWeak && n.State == "active" && n.Cluster != "" {
			k := n.Region + "/" + n.Cluster
			weak[k] = append(weak[k], n.Name)
		}
	}
	var out []Finding
	seen := map[string]bool{}
	for _, n := range l.Nodes {
		k := n.Region + "/" + n.Cluster
		if n.Cluster == "" || len(weak[k]) == 0 || seen[k] {
			continue
		}
		ep := n.PolicyEndpoint()
		for _, s := range pol.Segments() {
			if !pol.Sensitive(s) || !pol.Member(s, ep) {
				continue
			}
			seen[k] = true
			out = append(out, Finding{Severity: Warning, Check: "weak-next-to-sensitive", Subject: k,
				Reason:   fmt.Sprintf("weak nodes share this cluster with members of sensitive segment %s: the policy denies their traffic, but they share the cluster's control plane and Cilium's identity space", s),
				Evidence: fmt.Sprintf("%s is in %s; weak: %s", n.Name, s, strings.Join(firstN(weak[k], 5), ", ")),
				Fix:      "attest these nodes (TPM) so they become strong, move them to a cluster without sensitive workloads, or set the cluster's admitWithoutTPM: false"})
			break
		}
	}
	return out
}

func firstN(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(slices.Clone(s[:n]), fmt.Sprintf("… %d more", len(s)-n))
}
