package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/api"
)

// newAdminTokenCmd manages admin tokens: tokens for people and pipelines
// that expire, beside the bootstrap token in admin.json.
func newAdminTokenCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin-token",
		Short: "Create, list and revoke admin tokens (they expire; revocation takes effect at once)",
	}
	var a adminFlags
	var name string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --name NAME [--ttl 720h]",
		Short: "Create an admin token (shown once)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" {
				return usagef("give --name: whose token it is (a person, a pipeline)")
			}
			c, ctx, cancel, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			t, err := c.CreateAdminToken(ctx, api.CreateAdminTokenRequest{Name: name, TTL: ttl.String()})
			if err != nil {
				return err
			}
			if a.output == formatJSON {
				return writeJSON(e.stdout, t)
			}
			fmt.Fprintf(e.stderr, "admin token %s for %s, expires %s (shown once):\n", t.ID, t.Name, t.ExpiresAt.Format(time.RFC3339))
			fmt.Fprintln(e.stdout, t.Secret)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "whose token it is (a person, a pipeline)")
	create.Flags().DurationVar(&ttl, "ttl", 30*24*time.Hour, "lifetime (at most 8760h)")
	a.register(create, formatTable, formatJSON)

	var la adminFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List admin tokens (never their secrets)",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := la.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			ts, err := c.AdminTokens(ctx)
			if err != nil {
				return err
			}
			if la.output == formatJSON {
				return writeJSON(e.stdout, ts)
			}
			t := newTable(e.stdout, "ID", "NAME", "CREATED", "EXPIRES", "STATUS")
			for _, tk := range ts {
				exp, st := "never (bootstrap)", "valid"
				if !tk.ExpiresAt.IsZero() {
					exp = tk.ExpiresAt.Format(time.RFC3339)
				}
				if tk.Expired {
					st = "expired"
				}
				t.row(tk.ID, dash(tk.Name), tk.CreatedAt.Format(time.RFC3339), exp, st)
			}
			return t.flush()
		},
	}
	la.register(list, formatTable, formatJSON)

	var ra adminFlags
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an admin token at once (not the last valid one)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := ra.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			if err := c.RevokeAdminToken(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "admin token %s revoked\n", args[0])
			return nil
		},
	}
	ra.register(revoke)
	cmd.AddCommand(create, list, revoke)
	return cmd
}
