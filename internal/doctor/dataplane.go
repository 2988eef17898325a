package doctor

import (
	"fmt"
	"slices"
	"strings"

	"github.com/statemesh/statemesh/internal/api"
)

// dataplane says which enforcement each node runs and why, from the
// nodes' status reports (issue 22): "ebpf: ..." when the XDP guard runs,
// "nftables: ..." when nftables alone does (chosen, or eBPF cannot run).
// Nodes that were asked for eBPF and cannot run it are a warning; the rest
// is information, one finding per distinct state.
func dataplane(nodes []api.Node) []Finding {
	by := map[string][]string{}
	for _, n := range nodes {
		if n.Dataplane != "" {
			by[n.Dataplane] = append(by[n.Dataplane], n.Name)
		}
	}
	states := make([]string, 0, len(by))
	for s := range by {
		states = append(states, s)
	}
	slices.Sort(states)
	var out []Finding
	for _, s := range states {
		names := by[s]
		slices.Sort(names)
		kind, why, _ := strings.Cut(s, ": ")
		f := Finding{Severity: Info, Check: "dataplane-" + kind, Subject: strings.Join(firstN(names, 10), ", "),
			Evidence: fmt.Sprintf("%d nodes report: %s", len(names), s)}
		switch {
		case kind == "ebpf":
			f.Reason = "the XDP guard drops what is not the mesh on these nodes' underlay before the network stack; the evidence says who enforces the overlay policy (the eBPF firewall, or nftables and why)"
			f.Fix = "nothing to do; statemesh guard (on the node) prints the guard's maps and counters"
		case strings.HasPrefix(why, "eBPF was asked for"):
			f.Severity = Warning
			f.Reason = "these nodes were asked to run the XDP guard (--dataplane=ebpf or dataplane.firewall: ebpf) and cannot: nftables alone protects their underlay, so a handshake flood reaches WireGuard"
			f.Fix = "see the reason in the evidence (kernel without BPF/XDP, missing CAP_BPF, wrong --guard-interface); or choose auto to accept nftables where eBPF cannot run"
		default:
			f.Reason = "these nodes run nftables alone: " + why
			f.Fix = "nothing to do if intended; dataplane.firewall: auto runs the XDP guard wherever the kernel loads it"
		}
		out = append(out, f)
	}
	return out
}
