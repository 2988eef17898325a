package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/netmaker"
)

// newNetmakerCmd groups the Netmaker backend's own operations.
func newNetmakerCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "netmaker",
		Short: "Operate on the Netmaker server StateMesh keeps in line (docs/netmaker.md)",
	}
	cmd.AddCommand(newNetmakerDetachCmd(e))
	return cmd
}

func newNetmakerDetachCmd(e *env) *cobra.Command {
	var url, tokenFile string
	var yes bool
	cmd := &cobra.Command{
		Use:   "detach",
		Short: "Delete what StateMesh created in Netmaker, and nothing else",
		Long: `Delete what StateMesh created in a Netmaker server: in every network its
gateway roles, ACL policies and tags; then its enrollment keys; then its
networks. Netmaker refuses to delete a network that still has hosts: such a
network is kept, its allow-all default policy is turned back on, and the
error names it. Hosts, and everything StateMesh did not create, are left as
they are.

Stop the controller's Netmaker backend first (drop --netmaker-url), or its
next pass creates everything again.`,
		Example: `  statemesh netmaker detach --netmaker-url https://api.netmaker.example --netmaker-token-file /etc/statemesh/netmaker-token --yes`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if url == "" {
				return usagef("--netmaker-url is needed")
			}
			if !yes {
				return usagef("detach deletes StateMesh's networks, keys, tags and ACL policies in %s: add --yes", url)
			}
			token, err := netmaker.LoadToken(tokenFile)
			if err != nil {
				return usagef("a Netmaker token is needed (--netmaker-token-file or $%s): %v", netmaker.TokenEnv, err)
			}
			cl, err := netmaker.NewClient(url, token.Reveal(), 10*time.Second)
			if err != nil {
				return usagef("%v", err)
			}
			ctx, cancel := callCtx(cmd)
			defer cancel()
			rep, err := (&netmaker.Reconciler{C: cl}).Detach(ctx)
			for _, w := range rep.Writes {
				fmt.Fprintln(e.stdout, w)
			}
			for _, n := range rep.Notes {
				fmt.Fprintln(e.stdout, "note:", n)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "detached: %d changes\n", len(rep.Writes))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "netmaker-url", "", "the Netmaker server's API (https://api.netmaker.example)")
	f.StringVar(&tokenFile, "netmaker-token-file", "", "file with a super-admin access token or the master key (default $STATEMESH_NETMAKER_TOKEN)")
	f.BoolVar(&yes, "yes", false, "really delete")
	return cmd
}
