package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
	"github.com/statemesh/statemesh/internal/swtpm"
)

// Lab is a running lab.
type Lab struct {
	State   *State
	Admin   *apiclient.Client
	out     io.Writer
	noNetem bool
}

func (l *Lab) progress(format string, args ...any) {
	if l.out != nil {
		fmt.Fprintf(l.out, format+"\n", args...)
	}
}

// Prerequisites lists the programs the lab runs.
var Prerequisites = []string{"ip", "ss", "nsenter", "unshare", "tc", "ping", "mount", "sleep"}

// CheckPrerequisites says what is missing to run a lab here.
func CheckPrerequisites() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces, WireGuard, netlink)")
	}
	var missing []string
	for _, p := range Prerequisites {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing programs: %s (Debian: apt-get install iproute2 util-linux iputils-ping)", strings.Join(missing, ", "))
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return errors.New("/dev/net/tun is missing: userspace WireGuard needs it")
	}
	return nil
}

// Up builds and starts a lab, waits until it converges, and returns it.
// On failure it leaves the state file so Down can clean up.
func Up(ctx context.Context, cfg Config, out io.Writer) (*Lab, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := CheckPrerequisites(); err != nil {
		return nil, err
	}
	if cfg.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cfg.Binary = exe
	}
	if _, err := LoadState(cfg.Dir); err == nil {
		return nil, fmt.Errorf("a lab is already up in %s: run statemesh lab down first", cfg.Dir)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	st := newState(cfg)
	st.Hosts = cfg.Hosts()
	if err := st.save(); err != nil {
		return nil, err
	}
	l := &Lab{State: st, out: out}
	start := time.Now()
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"networks (management, WAN, region underlays)", l.networks},
		{fmt.Sprintf("%d hosts", len(st.Hosts)), func(ctx context.Context) error {
			for _, h := range st.Hosts {
				os.MkdirAll(filepath.Join(cfg.Dir, "hosts", h.Name), 0o700)
			}
			if err := l.hosts(ctx); err != nil {
				return err
			}
			return l.router(ctx)
		}},
		{"software TPMs", l.tpms},
		{"controller", l.controller},
		{"agents", func(ctx context.Context) error {
			if err := l.raiseHostLimits("/proc/sys"); err != nil {
				return err
			}
			return l.agents(ctx)
		}},
		{"enrollment", l.waitEnrolled},
		{"pods and probe servers", l.workloads},
		{fmt.Sprintf("%d external clients (wg-quick)", cfg.Clients), func(ctx context.Context) error {
			for i := range cfg.Clients {
				if _, err := l.AddClient(ctx, fmt.Sprintf("laptop%d", i+1), regionNames[0], "ops"); err != nil {
					return err
				}
			}
			return nil
		}},
		{"convergence", l.waitConverged},
	}
	for i, s := range steps {
		t := time.Now()
		l.progress("[%d/%d] %s ...", i+1, len(steps), s.what)
		if err := s.fn(ctx); err != nil {
			return l, fmt.Errorf("lab up: %s: %w (logs in %s; clean up with statemesh lab down)", s.what, err, cfg.Dir)
		}
		l.progress("      done in %s", time.Since(t).Round(time.Millisecond))
	}
	l.progress("lab up in %s: %d regions, %d clusters, %d nodes, %d gateways", time.Since(start).Round(100*time.Millisecond),
		cfg.Regions, cfg.Regions*cfg.Clusters, cfg.Regions*cfg.Clusters*cfg.Nodes, cfg.Regions*cfg.Gateways)
	l.progress("  logs:          %s", cfg.Dir)
	l.progress("  admin config:  export STATEMESH_CONFIG=%s", st.AdminConfig)
	l.progress("  try:           statemesh get nodes; statemesh lab exec %s -- wg show", st.Hosts[0].Name)
	return l, nil
}

// Open attaches to a running lab.
func Open(dir string) (*Lab, error) {
	st, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	l := &Lab{State: st}
	if st.AdminConfig != "" {
		if l.Admin, err = adminClient(st.AdminConfig); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func adminClient(path string) (*apiclient.Client, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cfg api.AdminConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, err
	}
	return apiclient.NewAdmin(cfg)
}

func (l *Lab) addNS(name string) error {
	if _, err := sh("ip", "netns", "add", name); err != nil {
		return err
	}
	if err := l.State.addNamespace(name); err != nil {
		return err
	}
	_, err := sh("ip", "-n", name, "link", "set", "lo", "up")
	return err
}

func (l *Lab) networks(ctx context.Context) error {
	if _, err := sh("ip", "link", "add", mgmtBridge, "type", "bridge"); err != nil {
		return err
	}
	if err := l.State.addRootLink(mgmtBridge); err != nil {
		return err
	}
	if _, err := sh("ip", "addr", "add", ControllerIP+"/16", "dev", mgmtBridge); err != nil {
		return err
	}
	if _, err := sh("ip", "link", "set", mgmtBridge, "up"); err != nil {
		return err
	}
	switches := []string{wanSwitch}
	for ri := range l.State.Config.Regions {
		switches = append(switches, regionSwitch(regionNames[ri]))
	}
	for _, sw := range switches {
		if err := l.addNS(sw); err != nil {
			return err
		}
		// No multicast snooping: the switches have no MLD querier, and
		// IPv6 neighbour discovery is multicast.
		for _, args := range [][]string{
			{"ip", "-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"},
			{"ip", "-n", sw, "link", "set", "br0", "up"},
		} {
			if _, err := sh(args...); err != nil {
				return err
			}
		}
	}
	return nil
}

// addrAdd is `ip addr add` of addr (CIDR) on dev in ns; IPv6 addresses
// skip duplicate address detection, which would hold them tentative (no
// source, no bind) for a second or more after the link comes up.
func addrAdd(ns, addr, dev string) []string {
	argv := []string{"ip", "-n", ns, "addr", "add", addr, "dev", dev}
	if strings.Contains(addr, ":") {
		argv = append(argv, "nodad")
	}
	return argv
}

// veth connects a host interface to a switch port.
func veth(hostNS, hostIf, swNS, swIf string, mtu int, addr string) error {
	m := strconv.Itoa(mtu)
	for _, args := range [][]string{
		{"ip", "link", "add", "name", hostIf, "netns", hostNS, "mtu", m, "type", "veth", "peer", "name", swIf, "netns", swNS, "mtu", m},
		addrAdd(hostNS, addr, hostIf),
		{"ip", "-n", hostNS, "link", "set", hostIf, "up"},
		{"ip", "-n", swNS, "link", "set", swIf, "master", "br0"},
		{"ip", "-n", swNS, "link", "set", swIf, "up"},
	} {
		if _, err := sh(args...); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) hosts(ctx context.Context) error {
	cfg := l.State.Config
	for i, h := range l.State.Hosts {
		if err := ctx.Err(); err != nil {
			return err
		}
		ns := h.NS()
		if err := l.addNS(ns); err != nil {
			return err
		}
		if err := veth(ns, "eth0", regionSwitch(h.Region), fmt.Sprintf("h%d", h.Index), cfg.UnderlayMTU, withBits(h.Underlay)); err != nil {
			return err
		}
		if h.Role == "gateway" {
			port := fmt.Sprintf("g%d", h.RegionIdx*10+h.Index)
			if err := veth(ns, "wan0", wanSwitch, port, cfg.WANMTU, withBits(h.WAN)); err != nil {
				return err
			}
			if cfg.WANDelay > 0 && !l.noNetem {
				if _, err := sh("ip", "netns", "exec", wanSwitch, "tc", "qdisc", "add", "dev", port, "root", "netem", "delay", cfg.WANDelay.String()); err != nil {
					if !strings.Contains(err.Error(), "qdisc kind is unknown") {
						return err
					}
					// This kernel has no sch_netem: run without delay.
					l.noNetem = true
					l.progress("      warning: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM); the WAN runs without the %s delay", cfg.WANDelay)
				}
			}
		}
		root := fmt.Sprintf("smlm%d", i)
		if _, err := sh("ip", "link", "add", "name", "mgmt0", "netns", ns, "type", "veth", "peer", "name", root); err != nil {
			return err
		}
		// Recorded: lab down deletes the pair from this end, whatever
		// becomes of the namespace.
		if err := l.State.addRootLink(root); err != nil {
			return err
		}
		for _, args := range [][]string{
			{"ip", "link", "set", root, "master", mgmtBridge},
			{"ip", "link", "set", root, "up"},
			{"ip", "-n", ns, "addr", "add", h.Mgmt.String() + "/16", "dev", "mgmt0"},
			{"ip", "-n", ns, "link", "set", "mgmt0", "up"},
		} {
			if _, err := sh(args...); err != nil {
				return err
			}
		}
		if h.Role != "gateway" {
			// What a CNI does on a node: forward for the node's pods.
			if _, err := sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
				return err
			}
		}
		holder, err := startHolder(ns, filepath.Join(cfg.Dir, "holders.log"))
		if err != nil {
			return err
		}
		l.State.mu.Lock()
		l.State.Holders[h.Name] = holder
		l.State.mu.Unlock()
		if err := l.State.save(); err != nil {
			return err
		}
	}
	// Wait until every holder has its private /run/wireguard.
	deadline := time.Now().Add(10 * time.Second)
	for _, h := range l.State.Hosts {
		if err := waitHolder(l.State.Holders[h.Name], deadline); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	return nil
}

// startHolder starts the process that holds a host's namespaces: its
// network namespace, and a mount namespace with a private /run/wireguard
// (each host's WireGuard control sockets) and, where the kernel has one, a
// bpf filesystem of its own on /sys/fs/bpf, where the agent pins its eBPF
// maps (statemesh lab exec HOST -- statemesh guard reads that host's).
func startHolder(ns, log string) (int, error) {
	return startDetached([]string{"ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", "mkdir -p /run/wireguard && mount -t tmpfs -o mode=0755 tmpfs /run/wireguard && " +
			"{ mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true; } && exec sleep infinity"}, log, nil)
}

// waitHolder waits until a holder has its private /run/wireguard.
func waitHolder(pid int, deadline time.Time) error {
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mounts", pid))
		if strings.Contains(string(b), " /run/wireguard tmpfs ") {
			return nil
		}
		if !alive(pid) || time.Now().After(deadline) {
			return errors.New("holder process did not set up its mount namespace")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tpms provisions and starts one swtpm per host that is not weak, with EK
// certificates from the lab's CA.
func (l *Lab) tpms(ctx context.Context) error {
	cfg := l.State.Config
	if !cfg.Attestation {
		l.progress("      attestation off: every node is weak")
		return nil
	}
	ca, err := swtpm.NewCA(filepath.Join(cfg.Dir, "swtpm-ca"))
	if err != nil {
		return err
	}
	var hosts []*Host
	for _, h := range l.State.Hosts {
		if !h.Weak {
			hosts = append(hosts, h)
		}
	}
	// The first provisioning creates the CA; the rest run in parallel.
	errs := make(chan error, len(hosts))
	sem := make(chan struct{}, 4)
	for i, h := range hosts {
		provision := func() error { return ca.Provision(filepath.Join(cfg.Dir, "hosts", h.Name, "tpm-state")) }
		if i == 0 {
			if err := provision(); err != nil {
				return err
			}
			continue
		}
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs <- provision()
		}()
	}
	// The controller's own TPM (agents attest it: mutual aTLS).
	ctlTPM := filepath.Join(cfg.Dir, "controller", "tpm-state")
	go func() {
		sem <- struct{}{}
		defer func() { <-sem }()
		errs <- ca.Provision(ctlTPM)
	}()
	for range len(hosts) {
		if err := <-errs; err != nil {
			return err
		}
	}
	ctlDir := filepath.Dir(ctlTPM)
	t, err := swtpm.Start(ctlTPM, filepath.Join(ctlDir, "tpm.sock"), filepath.Join(ctlDir, "swtpm.log"))
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	l.State.ControllerTPM = t.URL
	if err := l.State.addProc(Proc{Name: "swtpm", Host: "controller", PID: t.PID(), Log: filepath.Join(ctlDir, "swtpm.log")}); err != nil {
		return err
	}
	for _, h := range hosts {
		dir := filepath.Join(cfg.Dir, "hosts", h.Name)
		t, err := swtpm.Start(filepath.Join(dir, "tpm-state"), filepath.Join(dir, "tpm.sock"), filepath.Join(dir, "swtpm.log"))
		if err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
		h.TPM = t.URL
		if err := l.State.addProc(Proc{Name: "swtpm", Host: h.Name, PID: t.PID(), Log: filepath.Join(dir, "swtpm.log")}); err != nil {
			return err
		}
	}
	return l.State.save()
}

func (l *Lab) controller(ctx context.Context) error {
	cfg := l.State.Config
	dir := filepath.Join(cfg.Dir, "controller")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	specPath := filepath.Join(cfg.Dir, "mesh.yaml")
	var roots []string
	if cfg.Attestation {
		ca := &swtpm.CA{Dir: filepath.Join(cfg.Dir, "swtpm-ca")}
		for _, f := range []func() ([]byte, error){ca.RootPEM, ca.IssuerPEM} {
			b, err := f()
			if err != nil {
				return err
			}
			roots = append(roots, string(b))
		}
	}
	if err := os.WriteFile(specPath, []byte(cfg.Spec(roots...)), 0o644); err != nil {
		return err
	}
	argv := []string{cfg.Binary, "controller", "--data-dir", dir, "--listen", ControllerIP + ":7443", "--advertise", ControllerURL, "--metrics-listen", ControllerIP + ":9464",
		"--apply", specPath, "--gateway-timeout", cfg.GatewayTimeout.String()}
	if l.State.ControllerTPM != "" {
		argv = append(argv, "--tpm", l.State.ControllerTPM)
	}
	logPath := filepath.Join(cfg.Dir, "controller.log")
	pid, err := startDetached(argv, logPath, nil)
	if err != nil {
		return err
	}
	l.State.Controller = Proc{Name: "controller", PID: pid, Log: logPath, Argv: argv}
	l.State.AdminConfig = filepath.Join(dir, "admin.json")
	if err := l.State.save(); err != nil {
		return err
	}
	return l.waitController(ctx)
}

func (l *Lab) waitController(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if l.Admin == nil {
			if c, err := adminClient(l.State.AdminConfig); err == nil {
				l.Admin = c
			}
		}
		if l.Admin != nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := l.Admin.Regions(cctx)
			cancel()
			if err == nil {
				return nil
			}
		}
		if !alive(l.State.Controller.PID) {
			return fmt.Errorf("the controller exited; see %s", l.State.Controller.Log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the controller did not answer in 30s; see %s", l.State.Controller.Log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// AgentArgv is the command line of a host's agent (without the token once
// enrolled: the identity is in its data dir).
func (l *Lab) agentArgv(h *Host, token string) []string {
	cfg := l.State.Config
	argv := nsenterArgs(l.State.Holders[h.Name])
	if cfg.GoMaxProcs > 0 {
		// In the command line, so that a restarted agent has it too; its
		// wireguard-go daemon inherits it.
		argv = append(argv, "env", "GOMAXPROCS="+strconv.Itoa(cfg.GoMaxProcs))
	}
	argv = append(argv, cfg.Binary, "agent", "--controller", ControllerURL,
		"--name", h.Name, "--role", h.Role, "--data-dir", filepath.Join(cfg.Dir, "hosts", h.Name),
		"--endpoint", netip.AddrPortFrom(h.Underlay, 51820).String(), "--wireguard", "auto",
		"--probe-interval", cfg.ProbeInterval.String())
	if cfg.DriftInterval > 0 {
		argv = append(argv, "--drift-interval", cfg.DriftInterval.String())
	}
	if h.Role == "gateway" {
		argv = append(argv, "--public-endpoint", netip.AddrPortFrom(h.WAN, 51820).String())
	}
	tpmURL := "none"
	if h.TPM != "" {
		tpmURL = h.TPM
	}
	for _, p := range cfg.UnderlayAllow {
		argv = append(argv, "--underlay-allow", p)
	}
	if len(h.Labels) > 0 {
		var kv []string
		for k, v := range h.Labels {
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		argv = append(argv, "--labels", strings.Join(kv, ","))
	}
	if cfg.Attestation {
		// Mutual aTLS: every agent attests the controller's swtpm
		// against the spec's attestation.controller.
		argv = append(argv, "--controller-attestation", filepath.Join(cfg.Dir, "mesh.yaml"),
			"--controller-attestation-interval", cfg.ReattestInterval.String())
	}
	return append(argv, "--tpm", tpmURL)
}

func (l *Lab) agents(ctx context.Context) error {
	cfg := l.State.Config
	tokens := map[string]string{}
	for ri := range cfg.Regions {
		region := regionNames[ri]
		t, err := l.Admin.CreateToken(ctx, api.CreateTokenRequest{Region: region, Role: "gateway", Uses: cfg.Gateways, TTL: "1h"})
		if err != nil {
			return err
		}
		tokens[region] = t.Secret
		for cl := 1; cl <= cfg.Clusters; cl++ {
			c := fmt.Sprintf("%s/c%d", region, cl)
			t, err := l.Admin.CreateToken(ctx, api.CreateTokenRequest{Cluster: c, Role: "node", Uses: cfg.Nodes, TTL: "1h"})
			if err != nil {
				return err
			}
			tokens[c] = t.Secret
		}
	}
	for _, h := range l.State.Hosts {
		tok := tokens[h.Region]
		if h.Cluster != "" {
			tok = tokens[h.Region+"/"+h.Cluster]
		}
		if err := l.startAgent(h, tok); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) startAgent(h *Host, token string) error {
	dir := filepath.Join(l.State.Config.Dir, "hosts", h.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	argv := l.agentArgv(h, token)
	logPath := filepath.Join(dir, "agent.log")
	// The token goes in the environment, not on the command line (ps).
	pid, err := startDetached(argv, logPath, []string{"STATEMESH_TOKEN=" + token})
	if err != nil {
		return err
	}
	return l.State.addProc(Proc{Name: "agent", Host: h.Name, PID: pid, Log: logPath, Argv: l.agentArgv(h, "")})
}

// sizeWait is how long the lab waits for something every host does:
// base, or 3 s per host in large labs (a 20-region lab on 2 cores starts
// hundreds of processes: agents, wireguard-go per backbone link, BIRDs).
func (l *Lab) sizeWait(base time.Duration) time.Duration {
	w := time.Duration(len(l.State.Hosts)) * 3 * time.Second
	if c := l.State.Config; c.BGP && c.Regions > 2 {
		// A gateway brings its backbone links up one after the other, each
		// a wireguard-go process where the kernel has no WireGuard: seconds
		// each on a loaded machine.
		k := c.PeersPerRegion
		if k == 0 {
			k = spec.DefaultPeersPerRegion
		}
		w += time.Duration(c.Gateways-1+(c.Regions-1)*min(k, c.Gateways)) * 10 * time.Second
	}
	return max(base, w)
}

func (l *Lab) waitEnrolled(ctx context.Context) error {
	wait := l.sizeWait(60 * time.Second)
	deadline := time.Now().Add(wait)
	for {
		nodes, err := l.Admin.Nodes(ctx, "", "")
		if err == nil {
			byName := map[string]api.Node{}
			for _, n := range nodes {
				byName[n.Name] = n
			}
			missing, unhealthy := 0, 0
			for _, h := range l.State.Hosts {
				n, ok := byName[h.Name]
				if !ok {
					missing++
					continue
				}
				h.Overlay, _ = netip.ParseAddr(n.OverlayIPv4)
				if n.PodIPv4 != "" {
					h.PodBlock, _ = netip.ParsePrefix(n.PodIPv4)
				}
				if n.OverlayIPv6 != "" {
					h.Overlay6, _ = netip.ParseAddr(n.OverlayIPv6)
				}
				if n.PodIPv6 != "" {
					h.PodBlock6, _ = netip.ParsePrefix(n.PodIPv6)
				}
				if n.Healthy != nil && !*n.Healthy {
					unhealthy++
				}
			}
			if missing == 0 && unhealthy == 0 {
				return l.State.save()
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d hosts not enrolled, %d gateways not healthy after %s; see %s/hosts/*/agent.log", missing, unhealthy, wait, l.State.Config.Dir)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// podMTU returns the planned pod MTU of a cluster.
func (l *Lab) podMTU(ctx context.Context, region, cluster string) int {
	b, err := l.Admin.PlanJSON(ctx)
	if err == nil {
		if p, err := plan.Decode(b); err == nil {
			if c, ok := p.Cluster(region, cluster); ok {
				return c.PodMTU
			}
		}
	}
	return 1420
}

func (l *Lab) workloads(ctx context.Context) error {
	cfg := l.State.Config
	for _, h := range l.State.Hosts {
		if h.Role == "gateway" {
			continue
		}
		logPath := filepath.Join(cfg.Dir, "hosts", h.Name, "serve.log")
		argv := append(nsenterArgs(l.State.Holders[h.Name]), cfg.Binary, "lab", "serve", "--port", strconv.Itoa(servePort), "--name", h.Name)
		pid, err := startDetached(argv, logPath, nil)
		if err != nil {
			return err
		}
		if err := l.State.addProc(Proc{Name: "serve", Host: h.Name, PID: pid, Log: logPath, Argv: argv}); err != nil {
			return err
		}
		if !cfg.Pods || (!h.PodBlock.IsValid() && !h.PodBlock6.IsValid()) {
			continue
		}
		pns := h.PodNS()
		if err := l.addNS(pns); err != nil {
			return err
		}
		mtu := strconv.Itoa(l.podMTU(ctx, h.Region, h.Cluster))
		if _, err := sh("ip", "link", "add", "name", "eth0", "netns", pns, "mtu", mtu, "type", "veth", "peer", "name", "pod0", "netns", h.NS(), "mtu", mtu); err != nil {
			return err
		}
		if h.PodBlock.IsValid() {
			h.PodIP = h.PodBlock.Addr().Next().Next()
		}
		if h.PodBlock6.IsValid() {
			h.PodIP6 = h.PodBlock6.Addr().Next().Next()
		}
		for _, args := range podNetwork(h) {
			if _, err := sh(args...); err != nil {
				return err
			}
		}
		plog := filepath.Join(cfg.Dir, "hosts", h.Name, "pod-serve.log")
		pargv := []string{"ip", "netns", "exec", pns, cfg.Binary, "lab", "serve", "--port", strconv.Itoa(servePort), "--name", h.Name + "/pod"}
		ppid, err := startDetached(pargv, plog, nil)
		if err != nil {
			return err
		}
		if err := l.State.addProc(Proc{Name: "serve-pod", Host: h.Name, PID: ppid, Log: plog, Argv: pargv}); err != nil {
			return err
		}
	}
	return l.State.save()
}

// podNetwork is what a CNI does for the host's pod, per family of its pod
// blocks: the block's first address on the node's pod0, the second on the
// pod's eth0, the default route via the first.
func podNetwork(h *Host) [][]string {
	argv := [][]string{{"ip", "-n", h.NS(), "link", "set", "pod0", "up"}, {"ip", "-n", h.PodNS(), "link", "set", "eth0", "up"}}
	for _, x := range []struct {
		block netip.Prefix
		pod   netip.Addr
		ip    string
	}{{h.PodBlock, h.PodIP, "-4"}, {h.PodBlock6, h.PodIP6, "-6"}} {
		if !x.block.IsValid() {
			continue
		}
		gw := x.block.Addr().Next()
		bits := "/" + strconv.Itoa(x.block.Bits())
		argv = append(argv,
			addrAdd(h.NS(), gw.String()+bits, "pod0"),
			addrAdd(h.PodNS(), x.pod.String()+bits, "eth0"),
			[]string{"ip", x.ip, "-n", h.PodNS(), "route", "add", "default", "via", gw.String()})
	}
	return argv
}

func (l *Lab) waitConverged(ctx context.Context) error {
	deadline := time.Now().Add(l.sizeWait(90 * time.Second))
	for {
		m, err := l.Check(ctx, CheckOptions{Timeout: time.Second})
		if err == nil && m.Failures() == 0 {
			l.progress("      %d probes answered", len(m.Results))
			return nil
		}
		if errors.Is(err, ErrNothingToProbe) {
			// One node and no clients: there is no pair to converge.
			l.progress("      %v", err)
			return nil
		}
		switch {
		case err != nil:
			l.progress("      not yet: %v", err)
		default:
			l.progress("      not yet: %d of %d probes differ (first: %s)", m.Failures(), len(m.Results), m.FirstFailure())
			if os.Getenv("STATEMESH_LAB_DEBUG") != "" {
				var b strings.Builder
				m.Print(&b)
				l.progress("%s", b.String())
				for _, h := range l.State.Hosts {
					out, _ := exec.Command("nsenter", append(nsenterArgs(l.State.Holders[h.Name])[1:], "wg", "show")...).CombinedOutput()
					l.progress("--- %s %s\n%s", time.Now().Format("15:04:05.000"), h.Name, out)
				}
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err
			}
			return fmt.Errorf("%d of %d probes still fail after %s (statemesh lab check shows which)", m.Failures(), len(m.Results), l.sizeWait(90*time.Second))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
