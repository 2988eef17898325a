package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/policy"
	"github.com/statemesh/statemesh/internal/spec"
)

func newPolicyCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Inspect what the mesh's policy allows",
	}
	cmd.AddCommand(newPolicyMatrixCmd(e))
	return cmd
}

func newPolicyMatrixCmd(e *env) *cobra.Command {
	var file string
	var nodes bool
	var probes []string
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "matrix",
		Short: "Print the reachability matrix the policy implies (segment × segment, or node × node)",
		Long: `Print the reachability matrix the policy implies.

With -f, from a spec file: segment × segment, each cell naming what the row's
members may send to the column's members ("all", ports, or "-" for denied).
A trailing * marks a sensitive destination: only strong nodes (and clients)
get that access; weak nodes never reach it.

With --nodes, from the running controller: node × node for the given probes
(default icmp and tcp/7000, what "statemesh lab check" measures), from the
policy in force and the nodes' regions, clusters, classes and labels.`,
		Example: `  statemesh policy matrix -f mesh.yaml
  statemesh policy matrix --nodes --probe icmp --probe tcp/443`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(a.output, "table", "json"); err != nil {
				return err
			}
			if nodes == (file != "") {
				return usagef("give either -f SPEC (segment matrix) or --nodes (node matrix from the controller)")
			}
			var ports []spec.Port
			for _, s := range probes {
				p, err := spec.ParsePort(s)
				if err != nil || p.Proto == spec.ProtoAny || p.From != p.To {
					return usagef("--probe %q: give icmp, tcp/PORT or udp/PORT", s)
				}
				ports = append(ports, p)
			}
			if !nodes {
				m, err := e.loadSpec(file)
				if err != nil {
					return err
				}
				pol, err := policy.Compile(m.Policy)
				if err != nil {
					return err
				}
				if pol == nil {
					fmt.Fprintln(e.stdout, "the spec has no policy section: every node and pod may reach every other")
					return nil
				}
				if a.output == "json" {
					return writeJSON(e.stdout, pol.Matrix())
				}
				return printSegmentMatrix(e.stdout, pol)
			}
			c, ctx, cancel, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			text, err := c.Spec(ctx)
			if err != nil {
				return err
			}
			m, err := spec.Parse([]byte(text))
			if err != nil {
				return err
			}
			pol, err := policy.Compile(m.Policy)
			if err != nil {
				return err
			}
			list, err := c.Nodes(ctx, "", "")
			if err != nil {
				return err
			}
			nm := nodeMatrix(pol, list, ports)
			if a.output == "json" {
				return writeJSON(e.stdout, nm)
			}
			return printNodeMatrix(e.stdout, nm, probes)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "mesh spec (YAML); - for stdin")
	cmd.Flags().BoolVar(&nodes, "nodes", false, "node × node from the running controller")
	cmd.Flags().StringArrayVar(&probes, "probe", []string{"icmp", "tcp/7000"}, "with --nodes: traffic to judge (icmp, tcp/PORT, udp/PORT); repeatable")
	a.register(cmd, "table", "json")
	return cmd
}

func printSegmentMatrix(w io.Writer, pol *policy.Policy) error {
	segs := pol.Segments()
	fmt.Fprintln(w, "SEGMENT MATRIX (row: from, column: to; - denied; * strong sources only)")
	t := newTable(w, append([]string{"FROM \\ TO"}, segs...)...)
	cells := pol.Matrix()
	for i, from := range segs {
		row := []any{from}
		for j := range segs {
			row = append(row, cells[i*len(segs)+j].String())
		}
		t.row(row...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	var notes []string
	for _, s := range segs {
		if pol.Sensitive(s) {
			notes = append(notes, fmt.Sprintf("%s is sensitive: weak nodes are never members and never reach it", s))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintln(w, n)
		}
	}
	fmt.Fprintln(w, "everything not listed is denied (default deny between segments)")
	return nil
}

// nodeVerdicts is the node × node matrix for a set of probes.
type nodeVerdicts struct {
	Nodes []string `json:"nodes"`
	// Allowed[i][j] lists the probes node i may send to node j.
	Allowed [][][]string `json:"allowed"`
}

func nodeMatrix(pol *policy.Policy, list []api.Node, probes []spec.Port) nodeVerdicts {
	var eps []policy.Endpoint
	for _, n := range list {
		if n.Role == "gateway" {
			continue
		}
		eps = append(eps, n.PolicyEndpoint())
	}
	slices.SortFunc(eps, func(a, b policy.Endpoint) int { return strings.Compare(a.Name, b.Name) })
	out := nodeVerdicts{}
	for _, src := range eps {
		out.Nodes = append(out.Nodes, src.Name)
		row := make([][]string, 0, len(eps))
		for _, dst := range eps {
			var ok []string
			for _, p := range probes {
				if allowed, _ := pol.Allowed(src, dst, p.Proto, p.From); allowed {
					ok = append(ok, p.String())
				}
			}
			row = append(row, ok)
		}
		out.Allowed = append(out.Allowed, row)
	}
	return out
}

func printNodeMatrix(w io.Writer, nm nodeVerdicts, probes []string) error {
	fmt.Fprintf(w, "NODE MATRIX (row: from, column: to, by number; probes: %s; ✓ all allowed, - none)\n", strings.Join(probes, ", "))
	for i, n := range nm.Nodes {
		fmt.Fprintf(w, "%4d  %s\n", i, n)
	}
	hdr := []string{""}
	for i := range nm.Nodes {
		hdr = append(hdr, fmt.Sprint(i))
	}
	t := newTable(w, hdr...)
	for i := range nm.Nodes {
		row := []any{fmt.Sprint(i)}
		for j := range nm.Nodes {
			ok := nm.Allowed[i][j]
			switch {
			case i == j:
				row = append(row, "·")
			case len(ok) == len(probes):
				row = append(row, "✓")
			case len(ok) == 0:
				row = append(row, "-")
			default:
				row = append(row, strings.Join(ok, ","))
			}
		}
		t.row(row...)
	}
	return t.flush()
}
