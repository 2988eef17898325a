package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/lab"
)

func newLabCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab up|check|down|exec|status",
		Short: "A real StateMesh in network namespaces on this host (root, Linux)",
		Long: `The lab builds regions, clusters, nodes, gateways and pods as network namespaces on this
host, runs a real controller and real agents (WireGuard: kernel or wireguard-go), and
checks the mesh with real packets.

  sudo statemesh lab up                 # 2 regions × 2 clusters × 2 nodes, 2 gateways per region
  sudo statemesh lab check              # ICMP + TCP matrix, node↔node and pod↔pod
  sudo statemesh lab exec eu-central-c1-n1 -- wg show
  sudo statemesh lab down               # removes everything the lab created`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("lab what? use up, check, down, exec or status (got %q)", args)
		},
	}
	var dir string
	cmd.PersistentFlags().StringVar(&dir, "dir", lab.DefaultDir, "lab state, logs and data")

	var cfg lab.Config
	var file string
	up := &cobra.Command{
		Use:   "up [-f lab.yaml | --regions R --clusters C --nodes N --gateways G]",
		Short: "Build and start a lab, and wait until it converges",
		RunE: func(cmd *cobra.Command, args []string) error {
			if file != "" {
				data, err := e.readInput(file)
				if err != nil {
					return err
				}
				if err := lab.ParseConfig(data, &cfg); err != nil {
					return fmt.Errorf("%s: %w", file, err)
				}
			}
			cfg.Dir = dir
			cfg.Pods = true
			if !cfg.Policy && !cmd.Flags().Changed("clients") {
				cfg.Clients = 0
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			_, err := lab.Up(ctx, cfg, e.stdout)
			return err
		},
	}
	f := up.Flags()
	f.StringVarP(&file, "file", "f", "", "lab description (YAML: regions, clusters, nodes, gateways, wanDelay, wanMTU, underlayMTU)")
	f.IntVar(&cfg.Regions, "regions", 2, "regions")
	f.IntVar(&cfg.Clusters, "clusters", 2, "clusters per region")
	f.IntVar(&cfg.Nodes, "nodes", 2, "nodes per cluster")
	f.IntVar(&cfg.Gateways, "gateways", 2, "gateways per region")
	f.DurationVar(&cfg.WANDelay, "wan-delay", 10*time.Millisecond, "one-way delay between regions (tc netem)")
	f.IntVar(&cfg.WANMTU, "wan-mtu", 1500, "MTU of the WAN between regions")
	f.IntVar(&cfg.UnderlayMTU, "underlay-mtu", 1500, "MTU of each region's underlay")
	f.BoolVar(&cfg.Attestation, "attestation", true, "a software TPM (swtpm) per host and an attestation policy: hosts come up strong")
	f.BoolVar(&cfg.BGP, "bgp", false, "BIRD mode: WireGuard backbone links between gateways, BGP with BFD on each (needs bird2)")
	f.DurationVar(&cfg.BFDInterval, "bfd-interval", 0, "with --bgp: routing.bfd.interval (multiplier 3; 0: 100ms, 200ms above 4 regions)")
	f.IntVar(&cfg.PeersPerRegion, "peers-per-region", 0, "with --bgp: gateways of each other region a gateway links to (routing.backbone.peersPerRegion; 0: the spec's default, 2)")
	f.IntVar(&cfg.WeakNodes, "weak-nodes", 1, "nodes per cluster without a TPM (admitted as weak)")
	f.BoolVar(&cfg.Policy, "policy", true, "segmentation: frontend (c1), backend (c2), vault (sensitive: strong c2 nodes), see docs/lab.md")
	f.IntVar(&cfg.Clients, "clients", 1, "external clients (ops segment) brought up with wg-quick from statemesh client add (0 without --policy)")
	f.DurationVar(&cfg.ReattestInterval, "reattest-interval", 5*time.Second, "re-attestation interval of the lab's policy")
	f.DurationVar(&cfg.DriftInterval, "drift-interval", 0, "how often every agent checks its nftables table (0: 1s, 10s above 4 regions)")
	f.DurationVar(&cfg.ProbeInterval, "probe-interval", 0, "how often every agent measures its paths to the gateways (0: 3s, 30s above 4 regions)")
	f.IntVar(&cfg.GoMaxProcs, "gomaxprocs", 0, "GOMAXPROCS of every agent and its wireguard-go (0: Go's default, 1 above 4 regions)")
	f.StringVar(&cfg.PodFamily, "pods", lab.FamilyIPv4, "pod addresses: ipv4, ipv6 (IPv6 pod ranges and IPv6 overlay addresses beside the IPv4 ones) or dual")
	f.StringVar(&cfg.UnderlayFamily, "underlay", lab.FamilyIPv4, "family of the WAN and the regions' underlays: ipv4 or ipv6 (endpoints [addr]:port)")
	f.StringVar(&cfg.Dataplane, "dataplane", "", "the spec's dataplane.firewall: ebpf (XDP guard and eBPF firewall in front of nftables), nftables or auto; default: not set (nftables)")

	var timeout time.Duration
	var checkFrom []string
	check := &cobra.Command{
		Use:   "check",
		Short: "Probe node↔node and pod↔pod with ICMP and TCP; exit 1 on any unexpected result",
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(dir)
			if err != nil {
				return err
			}
			m, err := l.Check(context.Background(), lab.CheckOptions{Timeout: timeout, From: checkFrom})
			if err != nil {
				return err
			}
			m.Print(e.stdout)
			if n := m.Failures(); n > 0 {
				return fmt.Errorf("%d of %d probes failed", n, len(m.Results))
			}
			fmt.Fprintf(e.stdout, "all %d probes as the policy expects\n", len(m.Results))
			return nil
		},
	}
	check.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "per-probe timeout")
	check.Flags().StringSliceVar(&checkFrom, "from", nil, `probe only from these endpoints, as the matrix names them (e.g. "eu-central-c1-n1", "eu-central-c1-n1/pod", "client laptop1"); default: every endpoint`)

	var force bool
	down := &cobra.Command{
		Use:   "down [--force]",
		Short: "Remove everything the lab created (also after a crash)",
		RunE: func(cmd *cobra.Command, args []string) error {
			err := lab.Down(dir, e.stdout)
			if force {
				if errors.Is(err, lab.ErrNoLab) {
					err = nil
				}
				if ferr := lab.ForceClean(e.stdout); ferr != nil {
					return ferr
				}
			}
			return err
		},
	}
	down.Flags().BoolVar(&force, "force", false, "also remove every sml-* namespace and the lab bridge, state file or not")

	exec := &cobra.Command{
		Use:   "exec HOST -- COMMAND [ARGS...]",
		Short: "Run a command on a lab host (its network and mount namespaces), e.g. wg show",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(dir)
			if err != nil {
				return err
			}
			c, err := l.State.HostCmd(context.Background(), args[0], args[1:]...)
			if err != nil {
				return err
			}
			c.Stdin, c.Stdout, c.Stderr = e.stdin, e.stdout, e.stderr
			return c.Run()
		},
	}

	status := &cobra.Command{
		Use:   "status",
		Short: "List the lab's hosts and processes",
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(dir)
			if err != nil {
				return err
			}
			t := newTable(e.stdout, "HOST", "ROLE", "REGION", "CLUSTER", "UNDERLAY", "WAN", "OVERLAY", "POD")
			for _, h := range l.State.Hosts {
				t.row(h.Name, h.Role, h.Region, dash(h.Cluster), h.Underlay, orDash(h.WAN), joinAddrs(h.Overlay, h.Overlay6), joinAddrs(h.PodIP, h.PodIP6))
			}
			if err := t.flush(); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "\ncontroller pid %d, log %s\nexport STATEMESH_CONFIG=%s\n", l.State.Controller.PID, l.State.Controller.Log, l.State.AdminConfig)
			return nil
		},
	}

	// Hidden helpers that run inside lab namespaces.
	var from string
	var targets []string
	var port int
	var ptimeout time.Duration
	probe := &cobra.Command{
		Use: "probe", Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ts []lab.Target
			for _, t := range targets {
				name, addr, ok := strings.Cut(t, "=")
				a, err := netip.ParseAddr(addr)
				if !ok || err != nil {
					return usagef("--target %q: want NAME=IP", t)
				}
				ts = append(ts, lab.Target{Name: name, Addr: a})
			}
			return json.NewEncoder(e.stdout).Encode(lab.Probe(context.Background(), from, ts, port, ptimeout))
		},
	}
	probe.Flags().StringVar(&from, "from", "", "source name")
	probe.Flags().StringArrayVar(&targets, "target", nil, "NAME=IP")
	probe.Flags().IntVar(&port, "port", 7000, "TCP port")
	probe.Flags().DurationVar(&ptimeout, "timeout", 2*time.Second, "timeout")

	var name string
	serve := &cobra.Command{
		Use: "serve", Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return lab.Serve(ctx, port, name)
		},
	}
	serve.Flags().IntVar(&port, "port", 7000, "TCP port")
	serve.Flags().StringVar(&name, "name", "", "name to answer with")

	var interval, duration time.Duration
	var target string
	stream := &cobra.Command{
		Use: "stream", Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ap, err := netip.ParseAddrPort(target)
			if err != nil {
				return usagef("--target: %v", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			lab.Stream(ctx, ap, interval, e.stdout)
			return nil
		},
	}
	stream.Flags().StringVar(&target, "target", "", "IP:PORT")
	stream.Flags().DurationVar(&interval, "interval", 20*time.Millisecond, "probe interval")
	stream.Flags().DurationVar(&duration, "duration", 0, "stop after")

	var pcr int
	tamper := &cobra.Command{
		Use:   "tamper HOST [--pcr N]",
		Short: "Extend a PCR of a host's software TPM (HOST controller: the controller's), as a tampered boot would: its next attestation fails",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(dir)
			if err != nil {
				return err
			}
			if err := l.Tamper(args[0], pcr); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "extended PCR %d of %s's TPM\n", pcr, args[0])
			return nil
		},
	}
	tamper.Flags().IntVar(&pcr, "pcr", 7, "PCR to extend")

	var wanMTU int
	var wanDown bool
	wan := &cobra.Command{
		Use:   "wan GATEWAY [--mtu N] [--down]",
		Short: "Change a gateway's WAN link at the switch: lower its MTU (frames above it are dropped) or cut it; without flags, restore it (the lab's WAN MTU, up)",
		Example: `  sudo statemesh lab wan eu-central-gw1 --mtu 1400   # then: statemesh doctor
  sudo statemesh lab wan eu-central-gw1 --down
  sudo statemesh lab wan eu-central-gw1               # back to the lab's WAN MTU, up`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(dir)
			if err != nil {
				return err
			}
			mtu := wanMTU
			if mtu == 0 && !wanDown {
				mtu = l.State.Config.WANMTU
			}
			if err := l.WANLink(args[0], mtu, !wanDown); err != nil {
				return err
			}
			state := "up"
			if wanDown {
				state = "down"
			}
			if mtu > 0 {
				state += fmt.Sprintf(", MTU %d at the switch", mtu)
			}
			fmt.Fprintf(e.stdout, "%s's WAN link: %s\n", args[0], state)
			return nil
		},
	}
	wan.Flags().IntVar(&wanMTU, "mtu", 0, "MTU of the switch port (default: the lab's WAN MTU)")
	wan.Flags().BoolVar(&wanDown, "down", false, "cut the link")

	birdc := &cobra.Command{
		Use:     "birdc GATEWAY|router [-- BIRDC ARGS...]",
		Short:   "Run birdc against a BIRD-mode lab gateway's BIRD, or the lab's operator router (default: show protocols)",
		Example: "  sudo statemesh lab birdc eu-central-gw1 -- show bfd sessions\n  sudo statemesh lab birdc router -- show route",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(dir)
			if err != nil {
				return err
			}
			rest := args[1:]
			if len(rest) == 0 {
				rest = []string{"show", "protocols"}
			}
			var out string
			if args[0] == lab.RouterName {
				out, err = l.RouterBirdc(cmd.Context(), rest...)
			} else {
				out, err = l.Birdc(cmd.Context(), args[0], rest...)
			}
			fmt.Fprint(e.stdout, out)
			return err
		},
	}

	cmd.AddCommand(up, check, down, exec, status, tamper, wan, birdc, probe, serve, stream)
	return cmd
}

// joinAddrs lists the valid ones of a host's IPv4 and IPv6 addresses ("-"
// for none).
func joinAddrs(as ...netip.Addr) string {
	var s []string
	for _, a := range as {
		if a.IsValid() {
			s = append(s, a.String())
		}
	}
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}
