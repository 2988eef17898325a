package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/cilium"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/spec"
)

// adminFlags are shared by every admin command.
type adminFlags struct {
	config string
	output string
}

func (a *adminFlags) register(cmd *cobra.Command, outputs ...string) {
	cmd.Flags().StringVar(&a.config, "config", "", "admin config written by the controller (default $STATEMESH_CONFIG, /var/lib/statemesh/admin.json)")
	if len(outputs) > 0 {
		cmd.Flags().StringVarP(&a.output, "output", "o", outputs[0], "output format: "+strings.Join(outputs, ", "))
	}
}

func (a *adminFlags) client() (*apiclient.Client, error) {
	path := a.config
	if path == "" {
		path = os.Getenv("STATEMESH_CONFIG")
	}
	candidates := []string{path}
	if path == "" {
		candidates = []string{"/var/lib/statemesh/admin.json"}
		if home, err := os.UserHomeDir(); err == nil {
			candidates = append(candidates, filepath.Join(home, ".statemesh", "admin.json"))
		}
	}
	var data []byte
	var err error
	for _, p := range candidates {
		if data, err = os.ReadFile(p); err == nil {
			path = p
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("no admin config (%v): point --config or STATEMESH_CONFIG at the admin.json in the controller's data dir", err)
	}
	var cfg api.AdminConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("admin config %s: %w", path, err)
	}
	return apiclient.NewAdmin(cfg)
}

// connect returns the admin client and the context of one command's
// calls (a minute at most).
func (a *adminFlags) connect(cmd *cobra.Command) (*apiclient.Client, context.Context, context.CancelFunc, error) {
	c, err := a.client()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := callCtx(cmd)
	return c, ctx, cancel, nil
}

func callCtx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	return context.WithTimeout(ctx, 60*time.Second)
}

func newApplyCmd(e *env) *cobra.Command {
	var a adminFlags
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f mesh.yaml",
		Short: "Apply a mesh spec to the controller (validated and planned first; a rejected spec changes nothing)",
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := e.readInput(file)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			res, err := c.ApplySpec(ctx, data)
			if err != nil {
				return err
			}
			if a.output == formatJSON {
				return writeJSON(e.stdout, res)
			}
			if res.Unchanged {
				fmt.Fprintf(e.stdout, "mesh %s unchanged\n", res.Mesh)
			} else {
				fmt.Fprintf(e.stdout, "mesh %s applied: %d regions, %d clusters (revision %d)\n", res.Mesh, res.Regions, res.Clusters, res.Revision)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "mesh spec (YAML), - for standard input")
	a.register(cmd, formatTable, formatJSON)
	return cmd
}

func newGetCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get regions|clusters|nodes|spec|plan",
		Short: "Show what the controller holds",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("get what? use one of: regions, clusters, nodes, spec, plan (got %q)", args)
		},
	}
	var a adminFlags
	region := ""
	cluster := ""
	watchNodes := false
	get := func(what string) *cobra.Command {
		c := &cobra.Command{
			Use:   what,
			Short: "List " + what,
			RunE: func(cmd *cobra.Command, args []string) error {
				formats := []string{formatTable, formatJSON}
				if what == "nodes" {
					formats = append(formats, "labels")
				}
				if err := checkFormat(a.output, formats...); err != nil {
					return err
				}
				cl, err := a.client()
				if err != nil {
					return err
				}
				if what == "nodes" && watchNodes {
					ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
					defer stop()
					return followNodes(ctx, e, cl, region, cluster, time.Second)
				}
				ctx, cancel := callCtx(cmd)
				defer cancel()
				return getThing(ctx, e, cl, what, a.output, region, cluster)
			},
		}
		if what == "nodes" {
			a.register(c, formatTable, formatJSON, "labels")
		} else {
			a.register(c, formatTable, formatJSON)
		}
		if what == "nodes" {
			c.Flags().StringVar(&region, "region", "", "only nodes of this region")
			c.Flags().StringVar(&cluster, "cluster", "", "only nodes of this cluster (name, or REGION/CLUSTER)")
			c.Flags().BoolVarP(&watchNodes, "watch", "w", false, "print the list, then every change (enrolled, removed, state, class, health) as it happens; Ctrl-C ends")
		}
		return c
	}
	for _, w := range []string{"regions", "clusters", "nodes", "spec", "plan"} {
		cmd.AddCommand(get(w))
	}
	var ma adminFlags
	mapCmd := &cobra.Command{
		Use:   "map NODE",
		Short: "Show a node's network map as the controller computes it (what its agent applies)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(ma.output, formatTable, formatJSON); err != nil {
				return err
			}
			cl, ctx, cancel, err := ma.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			m, err := cl.NodeMap(ctx, args[0])
			if err != nil {
				return err
			}
			if ma.output == formatJSON {
				return writeJSON(e.stdout, m)
			}
			fmt.Fprintf(e.stdout, "node %s (%s %s/%s, %s) revision %d\ninterface %s mtu %d port %d addresses %v forwarding %v\nroutes %v\n\n",
				m.Self.Name, m.Self.Role, m.Self.Region, dash(m.Self.Cluster), m.Self.Class, m.Revision,
				m.Interface.Name, m.Interface.MTU, m.Interface.ListenPort, m.Interface.Addresses, m.Forwarding, m.Routes)
			t := newTable(e.stdout, "PEER", "ROLE", "PUBLIC KEY", "ENDPOINT", "ALLOWED IPS", "KEEPALIVE")
			for _, p := range m.Peers {
				ep := "-"
				if p.Endpoint.IsValid() {
					ep = p.Endpoint.String()
				}
				t.row(p.Name, p.Role, p.PublicKey, ep, joinAny(p.AllowedIPs), p.PersistentKeepalive)
			}
			return t.flush()
		},
	}
	ma.register(mapCmd, formatTable, formatJSON)
	cmd.AddCommand(mapCmd)
	return cmd
}

func getThing(ctx context.Context, e *env, c *apiclient.Client, what, output, region, cluster string) error {
	switch what {
	case "spec":
		s, err := c.Spec(ctx)
		if err != nil {
			return err
		}
		fmt.Fprint(e.stdout, s)
		return nil
	case "plan":
		b, err := c.PlanJSON(ctx)
		if err != nil {
			return err
		}
		_, err = e.stdout.Write(b)
		return err
	case "regions":
		rs, err := c.Regions(ctx)
		if err != nil {
			return err
		}
		if output == formatJSON {
			return writeJSON(e.stdout, rs)
		}
		t := newTable(e.stdout, "REGION", "OVERLAY", "CLUSTERS", "NODES", "GATEWAYS")
		for _, r := range rs {
			var gws []string
			for _, g := range r.Gateways {
				h := "healthy"
				if !g.Healthy {
					h = "UNHEALTHY"
				}
				gws = append(gws, fmt.Sprintf("%s(%s: %s)", g.Name, h, strings.Join(g.Clusters, ",")))
			}
			t.row(r.Name, r.OverlayIPv4, r.Clusters, r.Nodes, strings.Join(gws, " "))
		}
		return t.flush()
	case "clusters":
		cs, err := c.Clusters(ctx)
		if err != nil {
			return err
		}
		if output == formatJSON {
			return writeJSON(e.stdout, cs)
		}
		t := newTable(e.stdout, "CLUSTER", "ID", "OVERLAY", "POD IPV4", "POD IPV6", "NODES", "MAX", "GATEWAY")
		for _, cl := range cs {
			t.row(cl.Region+"/"+cl.Name, cl.ClusterID, cl.OverlayIPv4, dash(cl.PodIPv4), dash(cl.PodIPv6), cl.Nodes, cl.MaxNodes, dash(cl.DesignatedGateway))
		}
		return t.flush()
	case "nodes":
		if r, cl, ok := strings.Cut(cluster, "/"); ok {
			region, cluster = r, cl
		}
		ns, err := c.Nodes(ctx, region, cluster)
		if err != nil {
			return err
		}
		if output == formatJSON {
			return writeJSON(e.stdout, ns)
		}
		if output == "labels" {
			// Kubernetes node labels Cilium policies and schedulers use
			// (docs/cilium.md); one kubectl command per node, run against
			// the node's cluster.
			for _, n := range ns {
				if n.Cluster == "" {
					continue // gateways are not Kubernetes nodes
				}
				fmt.Fprintf(e.stdout, "kubectl --context %s label node %s --overwrite %s=%s %s=%s %s=%s %s=%s\n", spec.CiliumClusterName(n.Region, n.Cluster), n.Name,
					cilium.NodeRoleLabel, n.Role, cilium.NodeClassLabel, n.Class, cilium.NodeRegionLabel, n.Region, cilium.NodeClusterLabel, n.Cluster)
			}
			return nil
		}
		t := newTable(e.stdout, "NAME", "REGION", "CLUSTER", "ROLE", "BACKEND", "CLASS", "STATE", "OVERLAY", "PODS", "ENDPOINT", "HEALTH", "FIREWALL")
		for _, n := range ns {
			health := "-"
			if n.Healthy != nil {
				health = map[bool]string{true: "healthy", false: "unhealthy"}[*n.Healthy]
			}
			fw := dash(n.Firewall)
			if len(fw) > 40 {
				fw = fw[:37] + "..."
			}
			backend := "statemesh"
			if n.Role == netmap.RoleHost {
				backend = "netmaker" // netclient manages its WireGuard; StateMesh attests it
			}
			t.row(n.Name, n.Region, dash(n.Cluster), n.Role, backend, n.Class, n.State, n.OverlayIPv4, dash(n.PodIPv4), dash(n.Endpoint), health, fw)
		}
		return t.flush()
	}
	return usagef("unknown kind %q", what)
}

// followNodes prints the node list, then the changes, polling every
// interval until ctx ends.
func followNodes(ctx context.Context, e *env, cl *apiclient.Client, region, cluster string, interval time.Duration) error {
	if r, c, ok := strings.Cut(cluster, "/"); ok {
		region, cluster = r, c
	}
	describe := func(n api.Node) string {
		s := fmt.Sprintf("%s %s %s %s", n.Role, n.Class, n.State, n.OverlayIPv4)
		if n.Healthy != nil {
			s += map[bool]string{true: " healthy", false: " unhealthy"}[*n.Healthy]
		}
		if n.Reason != "" {
			s += " (" + n.Reason + ")"
		}
		return s
	}
	var prev map[string]api.Node
	for {
		ns, err := cl.Nodes(ctx, region, cluster)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(e.stderr, "%s  controller: %v (retrying)\n", time.Now().Format("15:04:05"), err)
		} else {
			cur := map[string]api.Node{}
			for _, n := range ns {
				cur[n.Name] = n
			}
			now := time.Now().Format("15:04:05")
			for _, n := range ns {
				old, had := prev[n.Name]
				switch {
				case prev == nil:
					fmt.Fprintf(e.stdout, "%s    %s  %s\n", now, n.Name, describe(n))
				case !had:
					fmt.Fprintf(e.stdout, "%s  + %s  %s\n", now, n.Name, describe(n))
				case describe(old) != describe(n):
					fmt.Fprintf(e.stdout, "%s  ~ %s  %s  (was %s)\n", now, n.Name, describe(n), describe(old))
				}
			}
			for name := range prev {
				if _, ok := cur[name]; !ok {
					fmt.Fprintf(e.stdout, "%s  - %s  removed\n", now, name)
				}
			}
			prev = cur
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newTokenCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "token create|list|revoke", Short: "Manage join tokens", Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("token what? use create, list or revoke (got %q)", args)
		}}
	var a adminFlags
	var req api.CreateTokenRequest
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --cluster REGION/CLUSTER [--role node|operator] [--ttl 24h] [--uses N] | --region REGION --role gateway",
		Short: "Create a join token (shown once)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Cluster == "" && req.Region == "" {
				return usagef("give --cluster REGION/CLUSTER (nodes, operators) or --region REGION (gateways)")
			}
			if req.Region != "" && req.Role == "" {
				req.Role = "gateway"
			}
			if req.Role == "" {
				req.Role = "node"
			}
			if cmd.Flags().Changed("ttl") {
				req.TTL = ttl.String()
			}
			c, ctx, cancel, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			t, err := c.CreateToken(ctx, req)
			if err != nil {
				return err
			}
			if a.output == formatJSON {
				return writeJSON(e.stdout, t)
			}
			where := t.Cluster
			if where == "" {
				where = t.Region
			} else {
				where = t.Region + "/" + t.Cluster
			}
			fmt.Fprintf(e.stderr, "token %s for %s %s, %d use(s), expires %s (shown once):\n", t.ID, t.Role, where, t.Uses, t.ExpiresAt.Format(time.RFC3339))
			fmt.Fprintln(e.stdout, t.Secret)
			return nil
		},
	}
	create.Flags().StringVar(&req.Cluster, "cluster", "", "REGION/CLUSTER the node will join")
	create.Flags().StringVar(&req.Region, "region", "", "REGION (gateway tokens)")
	create.Flags().StringVar(&req.Role, "role", "", "node, operator, gateway, or host (a Netmaker host running statemesh agent --attest-only)")
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "lifetime")
	create.Flags().IntVar(&req.Uses, "uses", 1, "how many nodes may enroll with it")
	a.register(create, formatTable, formatJSON)

	var la adminFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens (never their secrets)",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := la.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			ts, err := c.Tokens(ctx)
			if err != nil {
				return err
			}
			if la.output == formatJSON {
				return writeJSON(e.stdout, ts)
			}
			t := newTable(e.stdout, "ID", "ROLE", "REGION", "CLUSTER", "USED", "EXPIRES", "STATUS")
			now := time.Now()
			for _, tk := range ts {
				st := "valid"
				switch {
				case tk.Revoked:
					st = "revoked"
				case !now.Before(tk.ExpiresAt):
					st = "expired"
				case tk.Used >= tk.Uses:
					st = "used up"
				}
				t.row(tk.ID, tk.Role, tk.Region, dash(tk.Cluster), fmt.Sprintf("%d/%d", tk.Used, tk.Uses), tk.ExpiresAt.Format(time.RFC3339), st)
			}
			return t.flush()
		},
	}
	la.register(list, formatTable, formatJSON)

	var ra adminFlags
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := ra.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			if err := c.RevokeToken(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "token %s revoked\n", args[0])
			return nil
		},
	}
	ra.register(revoke)
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %d argument(s), got %d", cmd.CommandPath(), n, len(args))
		}
		return nil
	}
}

func newNodeCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "node remove|quarantine|release NAME", Short: "Act on an enrolled node", Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("node what? use remove, quarantine or release (got %q)", args)
		}}
	act := func(use, short string, fn func(ctx context.Context, c *apiclient.Client, name string) (string, error)) *cobra.Command {
		var a adminFlags
		c := &cobra.Command{
			Use: use + " NAME", Short: short, Args: exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				cl, ctx, cancel, err := a.connect(cmd)
				if err != nil {
					return err
				}
				defer cancel()
				msg, err := fn(ctx, cl, args[0])
				if err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, msg)
				return nil
			},
		}
		a.register(c)
		return c
	}
	cmd.AddCommand(
		act("remove", "Remove a node: its peers drop it mesh-wide", func(ctx context.Context, c *apiclient.Client, n string) (string, error) {
			return "node " + n + " removed", c.RemoveNode(ctx, n)
		}),
		act("quarantine", "Quarantine a node: cut it off the mesh, keep its record", func(ctx context.Context, c *apiclient.Client, n string) (string, error) {
			_, err := c.Quarantine(ctx, n)
			return "node " + n + " quarantined", err
		}),
		act("release", "Lift a node's quarantine", func(ctx context.Context, c *apiclient.Client, n string) (string, error) {
			_, err := c.Release(ctx, n)
			return "node " + n + " active", err
		}),
	)
	return cmd
}
