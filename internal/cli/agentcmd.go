package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/agent"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/dataplane/wg"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/secrets"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/tpm"
)

func newAgentCmd(e *env) *cobra.Command {
	var cfg agent.Config
	var logLevel, kekFile, controllerSpec string
	var withFirewall bool
	var metricsListen string
	var underlayAllow []string
	var guardAllow, guardManagement []string
	cmd := &cobra.Command{
		Use:   "agent --controller URL --token TOKEN [--role node|operator|gateway] [--data-dir DIR]",
		Short: "Run the node agent: enroll, then keep this node's WireGuard, addresses and routes in line with its network map",
		Long: `Run the node agent. It generates the node's WireGuard key locally (the private key never
leaves DATA-DIR), enrolls with the join token (once; the identity is kept in DATA-DIR),
then follows the node's network map and applies it: WireGuard peers (one operation per
changed peer), addresses, MTU, routes, forwarding on gateways.

WireGuard is the kernel module when the kernel has it, otherwise embedded wireguard-go,
which runs as its own process (statemesh wireguard-go IFNAME) so the data plane survives
agent restarts: one process for all of the host's devices (sm0 and a gateway's backbone
links), each with its own UAPI socket; either way 'wg show' works.`,
		// The flags are checked before anything runs, so a wrong command
		// line (from the Helm chart, say) fails at once with the flag's name.
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if _, err := newLogger(os.Stderr, logLevel); err != nil {
				return err
			}
			return checkAgentFlags(cmd, &cfg, underlayAllow)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(os.Stderr, logLevel)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg.Logger = log
			if kekFile != "" || os.Getenv("STATEMESH_KEK") != "" {
				kr, _, err := secrets.FromEnvOrFile("STATEMESH_KEK", kekFile)
				if err != nil {
					return fmt.Errorf("keyring: %w", err)
				}
				cfg.Keyring = kr
			}
			cfg.NoFirewall = !withFirewall
			if controllerSpec != "" {
				pol, err := controllerPolicyFrom(controllerSpec)
				if err != nil {
					return err
				}
				cfg.ControllerPolicy = pol
			}
			if err := guardFlags(&cfg.Guard, guardAllow, guardManagement); err != nil {
				return err
			}
			if cfg.Token == "" {
				cfg.Token = os.Getenv("STATEMESH_TOKEN")
			}
			a, err := agent.New(ctx, cfg)
			if err != nil {
				return err
			}
			defer a.Close()
			if err := serveMetrics(ctx, metricsListen, a.MetricsHandler(), log); err != nil {
				return fmt.Errorf("--metrics-listen: %w", err)
			}
			log.Info("agent running", "node", a.Name(), "controller", a.Identity().Server)
			return a.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Controller, "controller", "", "controller URL (https://HOST:PORT)")
	f.StringVar(&cfg.Token, "token", "", "join token, only needed for the first start (or $STATEMESH_TOKEN, which keeps it out of ps)")
	f.StringVar(&metricsListen, "metrics-listen", "127.0.0.1:9465", "serve Prometheus metrics on this address at /metrics (\"\" to turn off; the node firewall drops the underlay except WireGuard)")
	f.BoolVar(&withFirewall, "firewall", true, "enforce the mesh policy and underlay protection with StateMesh's nftables table")
	f.StringSliceVar(&underlayAllow, "underlay-allow", nil, "ports left open on the underlay besides WireGuard, e.g. tcp/22")
	f.StringVar(&cfg.Guard.Dataplane, "dataplane", "", "ebpf (the XDP guard on the underlay interface and the eBPF firewall on the WireGuard interface, in front of nftables), nftables, or auto (eBPF where it loads); default: the spec's dataplane.firewall, else nftables")
	f.StringVar(&cfg.Guard.Interface, "guard-interface", "", "underlay interface the XDP guard attaches to (default: the one carrying --endpoint, or the route to the controller, and on a gateway also the one carrying --public-endpoint)")
	f.StringSliceVar(&guardAllow, "guard-allow", nil, "prefixes WireGuard may always come from besides peers' endpoints (the underlay ranges, operators' clients), e.g. 10.0.0.0/16")
	f.StringSliceVar(&guardManagement, "guard-management-from", nil, "restrict the --underlay-allow ports to these source prefixes in the XDP guard (default: open to all)")
	f.Uint32Var(&cfg.Guard.HandshakesPerSource, "guard-handshakes-per-source", 0, "WireGuard handshake initiations per second the guard lets through from one unknown source (default 20)")
	f.Uint32Var(&cfg.Guard.HandshakesTotal, "guard-handshakes-total", 0, "WireGuard handshake initiations per second the guard lets through from all unknown sources together (default 1000)")
	f.StringVar(&cfg.Guard.AttachMode, "guard-xdp-mode", "", "XDP attach mode: native, generic, or empty (native where the driver supports it, generic on a veth: native XDP costs a veth its GRO)")
	f.StringToStringVar(&cfg.Labels, "labels", nil, "node labels for policy selectors, k=v,k2=v2 (sent at enrollment)")
	f.StringVar(&kekFile, "kek-file", "", "keyring encrypting the WireGuard key at rest when there is no TPM (or $STATEMESH_KEK)")
	f.StringVar(&cfg.Name, "name", "", "node name (default: the hostname)")
	f.StringVar(&cfg.Role, "role", "node", "node, operator, gateway, or host (a Netmaker host: with --attest-only)")
	f.BoolVar(&cfg.AttestOnly, "attest-only", false, "on a Netmaker host: attest the host and bind netclient's WireGuard key (--wireguard-key-from) into the evidence; touch no interface, route or firewall")
	f.StringVar(&cfg.KeyFromInterface, "wireguard-key-from", "netmaker", "with --attest-only: the WireGuard interface whose public key is enrolled")
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/statemesh-agent", "key, identity and last applied map")
	f.StringVar(&cfg.Endpoint, "endpoint", "", "IP:PORT ([IPv6]:PORT) where peers reach this node (default: the address towards the controller)")
	f.StringVar(&cfg.PublicEndpoint, "public-endpoint", "", "IP:PORT ([IPv6]:PORT), or just the IP with --listen-port, where other regions' gateways reach this gateway")
	f.IntVar(&cfg.ListenPort, "listen-port", 51820, "WireGuard UDP port advertised in the default endpoint")
	f.StringVar(&cfg.Interface, "interface", "", "WireGuard interface name (default: the map's, sm0)")
	f.StringVar(&cfg.WireGuard, "wireguard", wg.ModeAuto, "kernel, userspace or auto")
	f.StringVar(&controllerSpec, "controller-attestation", "", "mesh spec (YAML) whose attestation.controller the controller's own TPM must meet (mutual aTLS): checked before enrolling, before every map stream and every --controller-attestation-interval; no map is taken from a controller that fails")
	f.DurationVar(&cfg.ControllerEvery, "controller-attestation-interval", 30*time.Second, "how often to re-attest the controller (with --controller-attestation)")
	f.StringVar(&cfg.TPM, "tpm", tpm.Default(), "TPM: /dev/tpmrm0, swtpm://HOST:PORT, unix:PATH (swtpm socket), mssim://HOST:PORT, or none")
	f.DurationVar(&cfg.StatusEvery, "status-interval", 0, "status/heartbeat interval (default 1s for gateways, 10s otherwise)")
	f.DurationVar(&cfg.ReconcileEvery, "reconcile-interval", 30*time.Second, "re-apply the map this often to repair drift")
	f.DurationVar(&cfg.DriftEvery, "drift-interval", time.Second, "check StateMesh's nftables table this often and restore it when changed")
	f.DurationVar(&cfg.ProbeEvery, "probe-interval", 30*time.Second, "measure RTT, loss and path MTU to the gateways this often (negative: off)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func newWireGuardGoCmd(e *env) *cobra.Command {
	var logLevel string
	cmd := &cobra.Command{
		Use:    "wireguard-go IFNAME",
		Short:  "Run an embedded userspace WireGuard device (started by the agent)",
		Hidden: true,
		Args:   exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(os.Stderr, logLevel)
			if err != nil {
				return err
			}
			mtu, _ := strconv.Atoi(os.Getenv("STATEMESH_WG_MTU"))
			return wg.RunUserspace(context.Background(), args[0], mtu, log)
		},
	}
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// checkAgentFlags checks the agent's flags without side effects and fills
// what derives from them (the underlay ports, the role of an attest-only
// host, a public endpoint given as a bare IP).
func checkAgentFlags(cmd *cobra.Command, cfg *agent.Config, underlayAllow []string) error {
	switch {
	case cfg.AttestOnly && !cmd.Flags().Changed("role"):
		cfg.Role = netmap.RoleHost
	case cfg.AttestOnly != (cfg.Role == netmap.RoleHost):
		return usagef("--role host and --attest-only go together (a Netmaker host is attested, never configured)")
	}
	switch cfg.Role {
	case netmap.RoleNode, netmap.RoleOperator, netmap.RoleGateway, netmap.RoleHost:
	default:
		return usagef("--role %q: use node, operator or gateway", cfg.Role)
	}
	switch cfg.WireGuard {
	case wg.ModeAuto, wg.ModeKernel, wg.ModeUserspace:
	default:
		return usagef("--wireguard %q: use kernel, userspace or auto", cfg.WireGuard)
	}
	if cfg.ListenPort < 1 || cfg.ListenPort > 65535 {
		return usagef("--listen-port %d: use 1..65535", cfg.ListenPort)
	}
	cfg.UnderlayAllow = nil
	for _, s := range underlayAllow {
		p, err := spec.ParsePort(s)
		if err != nil {
			return usagef("--underlay-allow: %v", err)
		}
		cfg.UnderlayAllow = append(cfg.UnderlayAllow, netmap.PortRange{Proto: p.Proto, From: p.From, To: p.To})
	}
	if err := spec.CheckLabels(cfg.Labels); err != nil {
		return usagef("--labels: %v (write k=v,k2=v2 or repeat the flag)", err)
	}
	if cfg.Endpoint != "" {
		ep, err := endpointFlag(cfg.Endpoint, cfg.ListenPort)
		if err != nil {
			return usagef("--endpoint %q: %v", cfg.Endpoint, err)
		}
		cfg.Endpoint = ep
	}
	if cfg.PublicEndpoint != "" {
		ep, err := endpointFlag(cfg.PublicEndpoint, cfg.ListenPort)
		if err != nil {
			return usagef("--public-endpoint %q: %v", cfg.PublicEndpoint, err)
		}
		cfg.PublicEndpoint = ep
	}
	return nil
}

// endpointFlag reads IP:PORT, [IPv6]:PORT or a bare IP (v4 or v6, taking
// port) and returns the canonical IP:PORT ([IPv6]:PORT) the controller
// accepts.
func endpointFlag(s string, port int) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() != 0 {
		return ap.String(), nil
	}
	if ip, err := netip.ParseAddr(s); err == nil && ip.Zone() == "" {
		return netip.AddrPortFrom(ip.Unmap(), uint16(port)).String(), nil
	}
	return "", errors.New("write IP:PORT, [IPv6]:PORT or an IP (the port is then --listen-port)")
}

// controllerPolicyFrom reads the controller's attestation policy from a
// mesh spec (its attestation.controller), with the spec's field-path
// errors.
func controllerPolicyFrom(path string) (*attest.Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--controller-attestation: %w", err)
	}
	m, err := spec.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("--controller-attestation %s: %w", path, err)
	}
	pol, err := controller.ControllerPolicy(m)
	if err != nil {
		return nil, fmt.Errorf("--controller-attestation %s: %w", path, err)
	}
	if pol == nil {
		return nil, usagef("--controller-attestation %s: the spec has no attestation.controller (the policy the controller's TPM must meet)", path)
	}
	return pol, nil
}

// guardFlags checks the XDP guard's flags and parses its prefixes.
func guardFlags(g *agent.GuardConfig, allow, management []string) error {
	switch g.Dataplane {
	case "", agent.DataplaneEBPF, agent.DataplaneNFTables, agent.DataplaneAuto:
	default:
		return usagef("--dataplane %q: use ebpf, nftables or auto", g.Dataplane)
	}
	switch g.AttachMode {
	case "", "native", "generic":
	default:
		return usagef("--guard-xdp-mode %q: use native or generic", g.AttachMode)
	}
	for _, f := range []struct {
		name string
		in   []string
		out  *[]netip.Prefix
	}{{"--guard-allow", allow, &g.Allow}, {"--guard-management-from", management, &g.ManagementFrom}} {
		for _, s := range f.in {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return usagef("%s %q: not a prefix (10.0.0.0/16, fd00::/64)", f.name, s)
			}
			*f.out = append(*f.out, p.Masked())
		}
	}
	return nil
}
