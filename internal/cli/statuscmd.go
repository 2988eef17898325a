package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/api"
)

func newStatusCmd(e *env) *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "status [-o table|json]",
		Short: "One screen: regions, gateways and the clusters they carry, nodes by class and state, recent events",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(a.output, formatTable, formatJSON); err != nil {
				return err
			}
			c, ctx, cancel, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			st, err := c.Status(ctx)
			if err != nil {
				return err
			}
			if a.output == formatJSON {
				return writeJSON(e.stdout, st)
			}
			return printStatus(terminalSafe(e.stdout), st)
		},
	}
	a.register(cmd, formatTable, formatJSON)
	return cmd
}

func countsText(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func printStatus(w io.Writer, st api.Status) error {
	total := 0
	for _, n := range st.Nodes {
		total += n
	}
	fmt.Fprintf(w, "MESH %s   revision %d   %d nodes (%s)   %d clients\n", st.Mesh, st.Revision, total, countsText(st.Nodes), st.Clients)
	fmt.Fprintf(w, "reporting to this controller: %d   applying an older map than sent: %d\n\n", st.NodesReporting, st.NodesBehind)
	t := newTable(w, "REGION", "GATEWAY", "HEALTH", "STATE", "DESIGNATED FOR", "PEERS", "TRAFFIC IN/OUT", "BGP")
	for _, r := range st.Regions {
		if len(r.Gateways) == 0 {
			t.row(r.Name, "(none)", "-", "-", "-", "-", "-", "-")
		}
		for i, g := range r.Gateways {
			region := r.Name
			if i > 0 {
				region = ""
			}
			health := "healthy"
			if !g.Healthy {
				health = "UNHEALTHY"
			}
			t.row(region, g.Name, health, g.State, dash(strings.Join(g.Clusters, ", ")), g.Peers, bytesText(g.RxBytes)+" / "+bytesText(g.TxBytes), bgpSummary(g.Routing))
		}
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t = newTable(w, "CLUSTER", "DESIGNATED GATEWAY", "NODES")
	for _, r := range st.Regions {
		for _, c := range r.Clusters {
			t.row(r.Name+"/"+c.Name, dash(c.DesignatedGateway), countsText(c.Nodes))
		}
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "QUARANTINED       %s\n", dash(strings.Join(st.Quarantined, ", ")))
	fmt.Fprintf(w, "STALE HANDSHAKES  %s\n", dash(strings.Join(st.StalePeers, ", ")))
	for _, b := range st.Backends {
		state := "healthy"
		if !b.Healthy {
			state = "FAILING: " + b.Error
		}
		fmt.Fprintf(w, "BACKEND %-9s %s; last pass %s; hosts approved %d, rejected %d, removed %d\n", b.Name, state, b.LastSync.Format("15:04:05"), b.Approved, b.Rejected, b.Removed)
		if b.Ungated || b.RemovedUnattested > 0 {
			fmt.Fprintf(w, "  no device approval: hosts join at once; unattested hosts removed %d\n", b.RemovedUnattested)
		}
		if len(b.Unattested) > 0 {
			fmt.Fprintf(w, "  UNATTESTED (left in place) %s\n", strings.Join(b.Unattested, ", "))
		}
	}
	fmt.Fprintln(w)
	if len(st.Latency) > 0 {
		if err := printLatency(w, st.Latency); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "RECENT EVENTS")
	if len(st.Events) == 0 {
		fmt.Fprintln(w, "  (none since this controller started)")
	}
	t = newTable(w, "  TIME", "KIND", "SUBJECT", "WHAT")
	for _, ev := range st.Events {
		t.row("  "+ev.Time.Format("15:04:05"), ev.Kind, ev.Subject, ev.Message)
	}
	return t.flush()
}

// printLatency prints the region × region matrix: median RTT in ms, loss
// when there is any, and the smallest path MTU.
func printLatency(w io.Writer, cells []api.RegionLatency) error {
	var regions []string
	at := map[[2]string]api.RegionLatency{}
	for _, c := range cells {
		at[[2]string{c.From, c.To}] = c
		regions = append(regions, c.From, c.To)
	}
	slices.Sort(regions)
	regions = slices.Compact(regions)
	fmt.Fprintln(w, "LATENCY (median RTT ms, loss, smallest path MTU; rows probe columns' gateways)")
	t := newTable(w, append([]string{"  FROM \\ TO"}, regions...)...)
	for _, from := range regions {
		row := []any{"  " + from}
		for _, to := range regions {
			c, ok := at[[2]string{from, to}]
			switch {
			case !ok:
				row = append(row, "-")
			case c.Loss >= 1:
				row = append(row, "unreachable")
			default:
				cell := fmt.Sprintf("%.1f", c.RTTMillis)
				if c.Loss > 0 {
					cell += fmt.Sprintf(" %.0f%%loss", c.Loss*100)
				}
				if c.MinPathMTU > 0 {
					cell += fmt.Sprintf(" mtu %d", c.MinPathMTU)
				}
				row = append(row, cell)
			}
		}
		t.row(row...)
	}
	return t.flush()
}

// bgpSummary is a gateway's BIRD state in a few words: sessions
// established and BFD up, of all.
func bgpSummary(rs *api.RoutingStatus) string {
	if rs == nil {
		return "-"
	}
	if rs.BIRD != "running" {
		return "BIRD: " + rs.BIRD
	}
	est, bfd := 0, 0
	for _, s := range rs.Sessions {
		if s.BGPState == "Established" {
			est++
		}
		if s.BFD == "Up" {
			bfd++
		}
	}
	sum := fmt.Sprintf("%d/%d established, BFD up %d", est, len(rs.Sessions), bfd)
	if rs.Links != "" {
		sum += "; links: " + rs.Links
	}
	return sum
}

// bytesText is a byte count for people (1.2 MB).
func bytesText(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}
