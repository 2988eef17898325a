package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

func newClientCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "client",
		Short: "External WireGuard clients (operators' laptops): add, list, config, remove",
		Long: `External WireGuard clients reach the mesh through their region's clients
gateway, with a stock wg-quick configuration. What a client may reach is decided by
the policy: it belongs to a clients segment (policy.segments[].clients: true).`,
	}
	cmd.AddCommand(newClientAddCmd(e), newClientListCmd(e), newClientConfigCmd(e), newClientRemoveCmd(e))
	return cmd
}

func newClientAddCmd(e *env) *cobra.Command {
	var a adminFlags
	var region, segment, out string
	cmd := &cobra.Command{
		Use:   "add NAME --region REGION [--segment SEGMENT] [--out FILE]",
		Short: "Register a client and print its wg-quick configuration (private key shown once)",
		Long: `Register an external client and print a stock wg-quick configuration for it.

The key pair is generated here; only the public key is sent to the controller,
which never sees or stores the private key. The configuration (with the private
key) is printed once, or written to --out with mode 0600: keep it, it cannot be
shown again. Bring the client up with:  wg-quick up ./NAME.conf`,
		Example: `  statemesh client add alice --region eu-central --segment ops --out alice.conf
  sudo wg-quick up ./alice.conf`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if region == "" {
				return usagef("give the client's region with --region")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			priv, err := netmap.GeneratePrivateKey()
			if err != nil {
				return err
			}
			ctx, cancel := callCtx(cmd)
			defer cancel()
			cfg, err := c.AddClient(ctx, api.AddClientRequest{Name: args[0], Region: region, Segment: segment, PublicKey: priv.PublicKey()})
			if err != nil {
				return err
			}
			text := WGQuick(cfg, priv.String())
			if out == "" {
				_, err := fmt.Fprint(e.stdout, text)
				fmt.Fprintf(e.stderr, "client %s: %s in segment %s via %s; the private key above is not stored anywhere\n",
					cfg.Client.Name, cfg.Client.AddressIPv4, cfg.Client.Segment, cfg.PeerName)
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("writing the configuration (the client is registered; remove it and add it again): %w", err)
			}
			if _, err := f.WriteString(text); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "client %s: %s in segment %s via %s; configuration in %s (mode 0600; the private key is not stored anywhere else)\n",
				cfg.Client.Name, cfg.Client.AddressIPv4, cfg.Client.Segment, cfg.PeerName, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&region, "region", "", "region whose gateways serve the client")
	cmd.Flags().StringVar(&segment, "segment", "", "clients segment of the policy (may be omitted when there is one)")
	cmd.Flags().StringVar(&out, "out", "", "write the configuration to this file (mode 0600) instead of stdout")
	a.register(cmd)
	return cmd
}

func newClientListCmd(e *env) *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List external clients",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(a.output, "table", "json"); err != nil {
				return err
			}
			c, ctx, cancel, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			list, err := c.Clients(ctx)
			if err != nil {
				return err
			}
			if a.output == formatJSON {
				return writeJSON(e.stdout, list)
			}
			t := newTable(e.stdout, "NAME", "REGION", "SEGMENT", "ADDRESS", "GATEWAY", "CREATED")
			for _, cl := range list {
				t.row(cl.Name, cl.Region, cl.Segment, cl.AddressIPv4, dash(cl.Gateway), cl.CreatedAt.Format("2006-01-02 15:04"))
			}
			return t.flush()
		},
	}
	a.register(cmd, "table", "json")
	return cmd
}

func newClientConfigCmd(e *env) *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "config NAME",
		Short: "Print a client's configuration as it is now, with a placeholder for its private key",
		Long: `Print a client's wg-quick configuration as it is now. The private key is not
known to StateMesh: the output has a placeholder.

A region's clients stay on the gateway their files name (the clients gateway is
pinned: health changes do not move it). When that gateway is unhealthy and another
gateway of the region is healthy, this command moves the region's clients to the
healthy one and prints its [Peer]: replace the [Peer] section of the client's file,
and of the region's other clients' files (statemesh status shows the move among its events).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			cfg, err := c.ClientConfig(ctx, args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(e.stdout, WGQuick(cfg, "<the private key from the client's original configuration>"))
			return err
		},
	}
	a.register(cmd)
	return cmd
}

func newClientRemoveCmd(e *env) *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Revoke a client mesh-wide",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			if err := c.RemoveClient(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "client %s revoked: its gateway no longer accepts its key\n", args[0])
			return nil
		},
	}
	a.register(cmd)
	return cmd
}

// WGQuick renders a client's configuration in wg-quick's format.
func WGQuick(cfg api.ClientConfig, privateKey string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# StateMesh client %s: segment %s, region %s, via gateway %s\n", cfg.Client.Name, cfg.Client.Segment, cfg.Client.Region, cfg.PeerName)
	b.WriteString("[Interface]\n")
	fmt.Fprintf(&b, "PrivateKey = %s\n", privateKey)
	fmt.Fprintf(&b, "Address = %s\n", strings.Join(cfg.Addresses, ", "))
	if cfg.MTU > 0 {
		fmt.Fprintf(&b, "MTU = %d\n", cfg.MTU)
	}
	b.WriteString("\n[Peer]\n")
	fmt.Fprintf(&b, "# %s\n", cfg.PeerName)
	fmt.Fprintf(&b, "PublicKey = %s\n", cfg.PeerPublicKey)
	fmt.Fprintf(&b, "Endpoint = %s\n", cfg.PeerEndpoint)
	fmt.Fprintf(&b, "AllowedIPs = %s\n", strings.Join(cfg.AllowedIPs, ", "))
	if cfg.PersistentKeepalive > 0 {
		fmt.Fprintf(&b, "PersistentKeepalive = %d\n", cfg.PersistentKeepalive)
	}
	return b.String()
}
