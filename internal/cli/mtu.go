package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/mtu"
)

func newMTUCmd(e *env) *cobra.Command {
	var in mtu.Input
	var output string
	cmd := &cobra.Command{
		Use:   "mtu --underlay-mtu N --underlay-family ipv4|ipv6 [--cilium native|vxlan|geneve] [--cilium-wireguard] [-o json]",
		Short: "Compute the WireGuard and pod MTU over an underlay, with a per-layer breakdown",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(output, formatTable, formatJSON); err != nil {
				return err
			}
			if !cmd.Flags().Changed("underlay-mtu") {
				return usagef("--underlay-mtu is required")
			}
			r, err := mtu.Compute(in)
			if err != nil {
				return err
			}
			if output == formatJSON {
				return writeJSON(e.stdout, r)
			}
			fmt.Fprintf(e.stdout, "WireGuard MTU: %d\nPod MTU:       %d\n\n", r.WireGuardMTU, r.PodMTU)
			t := newTable(e.stdout, "LAYER", "OVERHEAD", "MTU LEFT", "DETAIL")
			for _, l := range r.Layers {
				t.row(l.Name, l.Overhead, l.MTU, l.Detail)
			}
			return t.flush()
		},
	}
	f := cmd.Flags()
	f.IntVar(&in.UnderlayMTU, "underlay-mtu", 0, "MTU of the network WireGuard runs over (e.g. 1500, 9001)")
	f.StringVar(&in.UnderlayFamily, "underlay-family", mtu.IPv4, "underlay address family: ipv4 or ipv6")
	f.StringVar(&in.Encapsulation, "cilium", mtu.Native, "Cilium routing: native, vxlan or geneve")
	f.IntVar(&in.GeneveOptionBytes, "geneve-options", 0, "Geneve option bytes (with --cilium geneve)")
	f.BoolVar(&in.CiliumWireGuard, "cilium-wireguard", false, "Cilium's own WireGuard encryption on top of the overlay")
	f.StringVar(&in.OverlayFamily, "overlay-family", mtu.IPv4, "family of the overlay carrying Cilium's encapsulation: ipv4 or ipv6")
	f.StringVar(&in.PayloadFamily, "payload-family", mtu.IPv4, "what pods send: ipv4, ipv6 or dual (IPv6 needs at least 1280)")
	f.StringVarP(&output, "output", "o", formatTable, "output format: table or json")
	return cmd
}
