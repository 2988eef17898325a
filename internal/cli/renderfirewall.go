package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/agent"
	"github.com/statemesh/statemesh/internal/dataplane/firewall"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/spec"
)

func newRenderFirewallCmd(e *env) *cobra.Command {
	var (
		a             adminFlags
		node, mapFile string
		iface         string
		underlayAllow []string
		check         bool
	)
	cmd := &cobra.Command{
		Use:   "firewall (--node NAME | --map FILE) [--underlay-allow tcp/22] [--check]",
		Short: "Print the nftables ruleset a node's agent loads (table inet statemesh), for review and GitOps",
		Long: `The ruleset comes from the node's map: from the running controller with --node, or offline
from a saved map with --map (the agent's DATA-DIR/map.json, or statemesh get map NODE -o json;
- reads standard input). It is the nft script the agent's first load runs (nft -f): the
underlay protection, the overlay policy's sets and rules, forwarding on gateways.
--underlay-allow and --interface are the agent's flags of the same name (not in the map).
--check also has nft check it (nft -c -f, needs nft and root). docs/policy.md explains the
ruleset.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (node == "") == (mapFile == "") {
				return usagef("give the node with --node (from the controller) or a saved map with --map FILE")
			}
			opts := firewall.StateOptions{Interface: iface, BackbonePrefix: agent.BackbonePrefix}
			for _, s := range underlayAllow {
				p, err := spec.ParsePort(s)
				if err != nil {
					return usagef("--underlay-allow: %v", err)
				}
				opts.UnderlayAllow = append(opts.UnderlayAllow, netmap.PortRange{Proto: p.Proto, From: p.From, To: p.To})
			}
			ctx, cancel := callCtx(cmd)
			defer cancel()
			var m netmap.Map
			if mapFile != "" {
				b, err := e.readInput(mapFile)
				if err != nil {
					return err
				}
				if m, err = decodeMap(b); err != nil {
					return fmt.Errorf("--map %s: %w", mapFile, err)
				}
			} else {
				c, err := a.client()
				if err != nil {
					return err
				}
				if m, err = c.NodeMap(ctx, node); err != nil {
					return err
				}
			}
			script := firewall.Script(firewall.StateFor(m, opts))
			if check {
				if err := nftCheck(ctx, script); err != nil {
					return err
				}
			}
			fmt.Fprintf(e.stdout, "# StateMesh node firewall of %s (map revision %d), as its agent loads it.\n# Load by hand with: nft -f FILE\n", m.Self.Name, m.Revision)
			_, err := e.stdout.Write([]byte(script))
			return err
		},
	}
	a.register(cmd)
	f := cmd.Flags()
	f.StringVar(&node, "node", "", "the node, from the running controller")
	f.StringVar(&mapFile, "map", "", "a saved map (JSON: the agent's map.json or get map -o json; - for standard input)")
	f.StringVar(&iface, "interface", "", "the agent's --interface (default: the map's)")
	f.StringSliceVar(&underlayAllow, "underlay-allow", nil, "the agent's --underlay-allow ports, e.g. tcp/22")
	f.BoolVar(&check, "check", false, "validate with nft -c -f (needs nft and root)")
	return cmd
}

// decodeMap reads a saved map and checks it as the agent does.
func decodeMap(b []byte) (netmap.Map, error) {
	var m netmap.Map
	if err := json.Unmarshal(b, &m); err != nil {
		return netmap.Map{}, err
	}
	if err := m.Validate(); err != nil {
		return netmap.Map{}, err
	}
	return m.Normalize(), nil
}

// nftCheck runs nft -c -f on a script: nft parses and checks it against the
// kernel without loading it.
func nftCheck(ctx context.Context, script string) error {
	cmd := exec.CommandContext(ctx, "nft", "-c", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft -c: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
