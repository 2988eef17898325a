package cli

import (
	"fmt"
	"io"
	"math/big"
	"strings"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
)

func newValidateCmd(e *env) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "validate -f mesh.yaml",
		Short: "Check a mesh spec: limits, names, CIDRs, overlaps, cluster IDs, feasibility",
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := e.loadSpec(file)
			if err != nil {
				return err
			}
			if _, err := plan.Compute(m, nil); err != nil {
				return fmt.Errorf("%s is valid but cannot be planned: %w", file, err)
			}
			clusters := 0
			for _, r := range m.Regions {
				clusters += len(r.Clusters)
			}
			fmt.Fprintf(e.stdout, "%s: valid (mesh %s: %d regions, %d clusters)\n", file, m.Metadata.Name, len(m.Regions), clusters)
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "mesh spec (YAML), - for standard input")
	return cmd
}

func newPlanCmd(e *env) *cobra.Command {
	var file, output, state string
	cmd := &cobra.Command{
		Use:   "plan -f mesh.yaml [-o table|json|yaml] [--state previous-plan.json]",
		Short: "Compute the address, capacity and MTU plan of a mesh",
		Long: `Compute, deterministically, the overlay blocks of every region and cluster, gateway
addresses, pod CIDRs (IPv4 and/or IPv6), per-node pod block sizes, Cilium cluster IDs,
the utilization of every range and the MTU of every layer per region and role.

With --state (a plan written earlier with -o json), existing allocations never move:
adding a region or cluster only takes free ranges, removing one frees only its own.
An infeasible spec exits 1 with the numbers and concrete ways out.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(output, formatTable, formatJSON, formatYAML); err != nil {
				return err
			}
			m, err := e.loadSpec(file)
			if err != nil {
				return err
			}
			prev, err := e.readPlanState(state)
			if err != nil {
				return err
			}
			p, err := plan.Compute(m, prev)
			if err != nil {
				return err
			}
			switch output {
			case formatJSON:
				return writeJSON(e.stdout, p)
			case formatYAML:
				return writeYAML(e.stdout, p)
			}
			return printPlan(e.stdout, p)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "mesh spec (YAML), - for standard input")
	cmd.Flags().StringVarP(&output, "output", "o", formatTable, "output format: table, json or yaml")
	cmd.Flags().StringVar(&state, "state", "", "previous plan (JSON) whose allocations must not move")
	return cmd
}

func printPlan(w io.Writer, p *plan.Plan) error {
	a := p.Addressing
	fmt.Fprintf(w, "Mesh %s\n", p.Mesh)
	fmt.Fprintf(w, "  overlay IPv4 %s (regions /%d, clusters /%d)", a.OverlayIPv4, a.RegionPrefixLen, a.ClusterPrefixLen)
	if a.OverlayIPv6.IsValid() {
		fmt.Fprintf(w, ", overlay IPv6 %s", a.OverlayIPv6)
	}
	fmt.Fprintln(w)
	if len(a.PodIPv4) > 0 {
		fmt.Fprintf(w, "  pod IPv4 %s\n", joinAny(a.PodIPv4))
	}
	if len(a.PodIPv6) > 0 {
		fmt.Fprintf(w, "  pod IPv6 %s\n", joinAny(a.PodIPv6))
	}

	fmt.Fprintln(w, "\nREGIONS")
	t := newTable(w, "REGION", "SLOT", "OVERLAY", "GATEWAYS", "CLIENTS", "CLUSTERS")
	for _, r := range p.Regions {
		gws := make([]string, len(r.Gateways))
		for i, g := range r.Gateways {
			gws[i] = g.OverlayIPv4.String()
		}
		t.row(r.Name, r.Slot, r.OverlayIPv4, strings.Join(gws, ","), r.ClientsIPv4, len(r.Clusters))
	}
	if err := t.flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nCLUSTERS")
	t = newTable(w, "CLUSTER", "ID", "OVERLAY", "POD IPV4", "NODE MASK", "POD IPV6", "NODE MASK", "MAX NODES", "MAX PODS", "POD MTU", "OPERATOR POD MTU")
	for _, r := range p.Regions {
		for _, c := range r.Clusters {
			t.row(r.Name+"/"+c.Name, c.ClusterID, c.OverlayIPv4, orDash(c.PodIPv4), maskOrDash(c.NodeMaskIPv4), orDash(c.PodIPv6), maskOrDash(c.NodeMaskIPv6),
				spec.Count(uint64(c.MaxNodes)), spec.Count(uint64(c.MaxPods)), c.PodMTU, intOrDash(c.OperatorPodMTU))
		}
	}
	if err := t.flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nMTU")
	t = newTable(w, "REGION", "ROLE", "UNDERLAY", "FAMILY", "WG OVERHEAD", "WG MTU", "LIMITED BY")
	for _, r := range p.Regions {
		for _, m := range r.MTU {
			t.row(r.Name, m.Role, m.UnderlayMTU, m.UnderlayFamily, m.WireGuardOverhead, m.WireGuardMTU, m.LimitedBy)
		}
	}
	if err := t.flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nUTILIZATION")
	t = newTable(w, "RANGE", "PREFIX", "USED", "TOTAL", "PERCENT")
	for _, u := range p.Usage {
		t.row(u.Range, u.Prefix, bigCount(u.Used), bigCount(u.Total), fmt.Sprintf("%.2f%%", u.Percent))
	}
	if err := t.flush(); err != nil {
		return err
	}
	for _, wmsg := range p.Warnings {
		fmt.Fprintln(w, "warning:", wmsg)
	}
	return nil
}

func joinAny[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ", ")
}

type validator interface {
	IsValid() bool
	String() string
}

func orDash(v validator) string {
	if !v.IsValid() {
		return "-"
	}
	return v.String()
}

// bigCount formats a decimal count with separators, or as a power of two
// when it is one and too long to read.
func bigCount(s string) string {
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return s
	}
	if n.IsUint64() {
		return spec.Count(n.Uint64())
	}
	if b := n.BitLen() - 1; new(big.Int).Lsh(big.NewInt(1), uint(b)).Cmp(n) == 0 {
		return fmt.Sprintf("2^%d", b)
	}
	return s
}

func intOrDash(n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func maskOrDash(n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("/%d", n)
}
