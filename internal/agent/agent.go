// Package agent is the node agent: it owns the node's WireGuard key,
// enrolls with a join token, then follows its network map from the
// controller and keeps the kernel in line with it (package dataplane/wg).
//
// It is restart-safe and headless: the last applied map is persisted, so a
// restarted agent re-applies it (adopting the existing interface with zero
// operations) before the controller answers, and keeps the data plane as it
// is while the controller is away; on reconnection it resumes from the
// revision it has.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/atomicfile"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/birdcfg"
	"github.com/statemesh/statemesh/internal/dataplane/firewall"
	"github.com/statemesh/statemesh/internal/dataplane/wg"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/secrets"
)

// Files in the agent's data directory.
const (
	KeyFile      = "wireguard.key"
	IdentityFile = "identity.json"
	MapFile      = "map.json"
	// EnrollKeyFile holds the certificate key while an enrollment is in
	// progress (until identity.json is written).
	EnrollKeyFile = "enroll-key.pem"
)

// Config configures an agent.
type Config struct {
	Controller string
	Token      string
	Name       string
	Role       string
	DataDir    string
	// Endpoint is where peers reach this node (IP:port); default: the
	// address this host uses to reach the controller, port ListenPort.
	Endpoint string
	// PublicEndpoint is where other regions' gateways reach a gateway.
	PublicEndpoint string
	ListenPort     int
	// Interface overrides the map's interface name (default: the map's).
	Interface string
	// TPM is the node's TPM (/dev/tpmrm0, swtpm://HOST:PORT, unix:PATH,
	// mssim://HOST:PORT) or "none".
	TPM string
	// ControllerPolicy, when set, is what the controller's own TPM
	// evidence must meet (mutual aTLS, the spec's attestation.controller):
	// the agent attests the controller before it enrolls, before every map
	// stream and every ControllerEvery (default 30 s), and takes no map
	// from a controller that fails (the data plane keeps its last map).
	ControllerPolicy *attest.Policy
	ControllerEvery  time.Duration
	// Keyring, when set and there is no TPM, encrypts the WireGuard key.
	Keyring *secrets.Keyring
	// Labels are the node's labels, sent at enrollment.
	Labels map[string]string
	// NoFirewall disables the nftables firewall (the node then does not
	// enforce the policy, and reports so).
	NoFirewall bool
	// AttestOnly runs the agent on a Netmaker host (role host): it enrolls
	// with the public key of netclient's WireGuard interface
	// KeyFromInterface, binds that key into its TPM evidence, re-attests
	// and reports; it touches no interface, route or firewall.
	AttestOnly       bool
	KeyFromInterface string
	// UnderlayAllow are ports the firewall leaves open on the underlay.
	UnderlayAllow []netmap.PortRange
	// Guard chooses ebpf, nftables or auto and configures the XDP guard
	// (guard.go).
	Guard GuardConfig
	// DriftEvery is how often the firewall is checked for drift (1s).
	DriftEvery time.Duration
	// WireGuard is kernel, userspace or auto.
	WireGuard        string
	UserspaceCommand []string
	// StatusEvery is the status/heartbeat interval (default 1s for
	// gateways, 10s otherwise). ReconcileEvery re-applies the map to repair
	// drift (default 30s).
	StatusEvery    time.Duration
	ReconcileEvery time.Duration
	// ProbeEvery is how often the agent measures its paths to gateways
	// (RTT, loss, path MTU; default 30s, negative: never).
	ProbeEvery time.Duration
	// StaleAfter is the handshake age after which a peer with keepalive
	// counts as stale (default 3m).
	StaleAfter time.Duration
	Logger     *slog.Logger
}

// Agent is a running node agent.
type Agent struct {
	cfg Config
	log *slog.Logger
	key netmap.Key
	pub netmap.Key // the public key enrolled and bound into TPM evidence
	id  *apiclient.Identity
	cli *apiclient.Client
	dev meshDevice
	// open opens dev (wg.Open); route syncs BIRD-mode routing (backbone
	// links, rules, BIRD: syncRouting). Tests replace both.
	open  openDevice
	route func(ctx context.Context, m netmap.Map)
	mu    sync.Mutex
	cur   netmap.Map // desired map (from the controller)
	prev  netmap.Map // last successfully applied map
	ok    bool       // last apply succeeded
	// applies counts map applications (tests and metrics).
	applies  int
	dirty    bool
	saveKick chan struct{}
	// fw is the node's nftables table (nil: not enforcing); fwErr the last
	// failure; fwState says why it is nil.
	fw nodeFirewall
	// fwMu serializes the table's writers (the apply path, drift repair,
	// the eBPF firewall's mark rule) and guards fwMap, the map the table
	// was last made to match: a writer that runs late must restore that
	// map's table, not an older one it read before.
	fwMu    sync.Mutex
	fwMap   netmap.Map
	metrics *agentMetrics
	paths   []api.PathProbe
	// BIRD mode: backbone link devices and their applied maps (used by
	// the apply path only), and the last routing error.
	links      map[string]*wg.Device
	linkMaps   map[string]netmap.Map
	linksSwept bool
	routingErr error
	linkErr    error // backbone links that could not be set up
	bird       *birdcfg.Runner
	// bfdSeenUp: the BFD neighbours this runner's BIRD has been seen up
	// with, and when the runner started (bfdReported). Under mu.
	bfdSeenUp  map[string]bool
	birdSince  time.Time
	reportKick chan struct{}
	// stopWatch ends the current map stream (the controller failed
	// attestation).
	stopWatch           context.CancelFunc
	controllerUntrusted bool
	ctlVerifier         *apiclient.ControllerVerifier
	birdSwept           bool
	pathsRound          int           // probe rounds finished; reports carry paths after each
	reach               *api.WANReach // a baseline-mode gateway's reach of other regions (reach.go)
	fwErr               error
	fwState             string
	guard               guardHook
	driftRepairs        int
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Role == "" {
		c.Role = netmap.RoleNode
	}
	if c.ListenPort == 0 {
		c.ListenPort = 51820
	}
	if c.WireGuard == "" {
		c.WireGuard = wg.ModeAuto
	}
	if c.StatusEvery == 0 {
		c.StatusEvery = 10 * time.Second
		if c.Role == netmap.RoleGateway {
			c.StatusEvery = time.Second
		}
	}
	if c.ReconcileEvery == 0 {
		c.ReconcileEvery = 30 * time.Second
	}
	if c.ProbeEvery == 0 {
		c.ProbeEvery = 30 * time.Second
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = 3 * time.Minute
	}
	if c.DriftEvery == 0 {
		c.DriftEvery = time.Second
	}
	if c.Name == "" {
		c.Name, _ = os.Hostname()
	}
}

// New prepares an agent: loads or creates its key, loads its identity or
// enrolls.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	cfg.setDefaults()
	if cfg.DataDir == "" {
		return nil, errors.New("agent: no data dir")
	}
	if was, err := atomicfile.PrivateDir(cfg.DataDir); was != 0 && err == nil {
		cfg.Logger.Warn("the data directory was readable by others; made it private (0700)", "dir", cfg.DataDir, "was", fmt.Sprintf("%04o", was))
	} else if err != nil {
		return nil, err
	}
	a := newAgent(cfg)
	a.initGuard()
	var err error
	if cfg.AttestOnly {
		if a.pub, err = interfaceKey(cfg.KeyFromInterface); err != nil {
			return nil, err
		}
		cfg.NoFirewall = true
		a.cfg = cfg
	} else {
		if a.key, err = a.loadOrCreateKey(); err != nil {
			return nil, err
		}
		a.pub = a.key.PublicKey()
	}
	if a.id, err = a.identity(ctx); err != nil {
		return nil, err
	}
	if a.cli, err = a.id.Client(); err != nil {
		return nil, err
	}
	switch {
	case cfg.AttestOnly:
		a.fwState = "attest-only: netclient's host, Netmaker's ACLs apply"
		return a, nil
	case cfg.NoFirewall:
		a.fwState = "off (--firewall=false): this node does not enforce the policy"
	default:
		fw, err := firewall.New(a.log)
		if err == nil {
			// Before the control channel opens: see firewall.Track.
			err = fw.Track(ctx)
		}
		if err != nil {
			a.fwState = err.Error()
			a.log.Error("firewall unavailable: this node does NOT enforce the policy", "err", err)
		} else {
			a.fw, a.fwState = fw, "enforced"
		}
	}
	if m, err := loadMap(filepath.Join(cfg.DataDir, MapFile)); err == nil {
		a.cur = m
		a.log.Info("loaded last applied map", "revision", m.Revision, "peers", len(m.Peers))
	} else if !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("ignoring unreadable saved map; resyncing from the controller", "err", err)
	}
	return a, nil
}

// newAgent is an agent with nothing opened yet: New loads its key and
// identity and opens the firewall; the device opens at the first apply.
func newAgent(cfg Config) *Agent {
	a := &Agent{cfg: cfg, log: cfg.Logger, saveKick: make(chan struct{}, 1), links: map[string]*wg.Device{}, linkMaps: map[string]netmap.Map{},
		reportKick: make(chan struct{}, 1), open: openWG}
	a.route = a.syncRouting
	a.metrics = newAgentMetrics(a)
	return a
}

// Name returns the node's name.
func (a *Agent) Name() string { return a.id.Node.Name }

// Identity returns the node's enrollment.
func (a *Agent) Identity() *apiclient.Identity { return a.id }

func loadMap(path string) (netmap.Map, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return netmap.Map{}, err
	}
	var m netmap.Map
	if err := json.Unmarshal(b, &m); err != nil {
		return netmap.Map{}, fmt.Errorf("%s: %w", path, err)
	}
	if err := m.Validate(); err != nil {
		return netmap.Map{}, fmt.Errorf("%s: %w", path, err)
	}
	return m.Normalize(), nil
}

func (a *Agent) saveMap(m netmap.Map) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(a.cfg.DataDir, MapFile), b, 0o600)
}

func (a *Agent) device(ifname string) (meshDevice, error) {
	if a.cfg.Interface != "" {
		ifname = a.cfg.Interface
	}
	if a.dev != nil {
		return a.dev, nil
	}
	d, err := a.open(wg.Config{Interface: ifname, Mode: a.cfg.WireGuard, PrivateKey: a.key,
		UserspaceCommand: a.cfg.UserspaceCommand, LogDir: a.cfg.DataDir, Logger: a.log})
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.dev = d
	a.mu.Unlock()
	return d, nil
}

// apply makes the kernel match the current desired map with a full diff
// against the device.
func (a *Agent) apply(ctx context.Context) error { return a.applyDelta(ctx, nil) }

// applyDelta applies the current desired map. When delta is the only
// change since the last successful apply, only its operations are made
// (without reading the whole device); otherwise it diffs the full state.
func (a *Agent) applyDelta(ctx context.Context, delta *netmap.Delta) error {
	a.mu.Lock()
	desired, prev, ok := a.cur, a.prev, a.ok
	a.mu.Unlock()
	if desired.Interface.Name == "" {
		return nil
	}
	if a.cfg.Interface != "" {
		desired.Interface.Name = a.cfg.Interface
	}
	dev, err := a.device(desired.Interface.Name)
	if err != nil {
		return err
	}
	var res wg.Result
	if delta != nil && ok && prev.Interface.Name != "" {
		if a.cfg.Interface != "" {
			prev.Interface.Name = a.cfg.Interface
		}
		res, err = dev.ApplyDelta(ctx, prev, desired, *delta)
	} else {
		res, err = dev.Apply(ctx, desired, prev)
	}
	a.mu.Lock()
	a.applies++
	a.ok = err == nil
	if err == nil {
		a.prev = desired
	}
	a.mu.Unlock()
	if err != nil {
		a.metrics.applyErrors.Inc()
		return fmt.Errorf("applying map revision %d: %w", desired.Revision, err)
	}
	kind := "full"
	if delta != nil && ok {
		kind = "delta"
	}
	a.metrics.applySeconds.WithLabelValues(kind).Observe(res.Duration.Seconds())
	if delta != nil && ok {
		a.syncFirewall(ctx, prev, desired, delta)
	} else {
		a.syncFirewall(ctx, prev, desired, nil)
	}
	a.syncGuard(ctx, desired)
	if desired.Routing != nil || len(a.links) > 0 || !a.linksSwept {
		if delta == nil || !ok || !desired.Routing.Equal(prev.Routing) {
			a.route(ctx, desired)
		}
	}
	if !res.NoChanges {
		a.log.Info("applied map", "revision", desired.Revision, "peers", len(desired.Peers), "added", res.Added, "updated", res.Updated,
			"removed", res.Removed, "other", res.OtherOps, "took", res.Duration.Round(time.Microsecond), "mode", dev.Mode())
	}
	a.markDirty()
	return nil
}

// markDirty schedules saving the applied map. Saving is coalesced (at most
// every saveEvery) so a burst of deltas on a 5,000-peer map does not write
// the whole map each time; Run saves on exit.
func (a *Agent) markDirty() {
	a.mu.Lock()
	a.dirty = true
	a.mu.Unlock()
	select {
	case a.saveKick <- struct{}{}:
	default:
	}
}

const saveEvery = time.Second

func (a *Agent) saveLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			a.flush()
			return
		case <-a.saveKick:
		}
		a.flush()
		select {
		case <-ctx.Done():
			a.flush()
			return
		case <-time.After(saveEvery):
		}
	}
}

func (a *Agent) flush() {
	a.mu.Lock()
	m, dirty := a.prev, a.dirty
	a.dirty = false
	a.mu.Unlock()
	if !dirty {
		return
	}
	if err := a.saveMap(m); err != nil {
		a.log.Error("saving the applied map", "err", err)
	}
}

// Run applies the saved map (if any), then follows the controller until
// ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if a.cfg.AttestOnly {
		var wgRun sync.WaitGroup
		wgRun.Add(3)
		go func() { defer wgRun.Done(); a.renewLoop(ctx) }()
		go func() { defer wgRun.Done(); a.reattestLoop(ctx) }()
		go func() { defer wgRun.Done(); a.statusLoop(ctx) }()
		wgRun.Wait()
		return nil
	}
	if a.cur.Interface.Name != "" {
		if err := a.apply(ctx); err != nil {
			a.log.Error("re-applying saved map", "err", err)
		}
	}
	var wgRun sync.WaitGroup
	wgRun.Add(10)
	go func() { defer wgRun.Done(); a.probeLoop(ctx) }()
	go func() { defer wgRun.Done(); a.reachLoop(ctx) }()
	go func() { defer wgRun.Done(); a.guardLoop(ctx) }()
	go func() { defer wgRun.Done(); a.firewallLoop(ctx) }()
	go func() { defer wgRun.Done(); a.renewLoop(ctx) }()
	go func() { defer wgRun.Done(); a.reattestLoop(ctx) }()
	go func() { defer wgRun.Done(); a.saveLoop(ctx) }()
	go func() { defer wgRun.Done(); a.statusLoop(ctx) }()
	go func() { defer wgRun.Done(); a.reconcileLoop(ctx) }()
	go func() { defer wgRun.Done(); a.controllerLoop(ctx) }()
	defer wgRun.Wait()
	backoff := 200 * time.Millisecond
	for {
		a.mu.Lock()
		from := a.cur.Revision
		a.mu.Unlock()
		start := time.Now()
		err := a.verifyController(ctx)
		if err == nil {
			wctx, stop := context.WithCancel(ctx)
			a.mu.Lock()
			a.stopWatch = stop
			a.mu.Unlock()
			err = a.client().Watch(wctx, from, func(f api.Frame) error { return a.onFrame(ctx, f) })
			stop()
		}
		if ctx.Err() != nil {
			return nil
		}
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == api.CodeUnauthenticated {
			a.log.Error("the controller no longer accepts this node (removed?); keeping the data plane as it is", "err", err)
		} else if errors.As(err, &ae) && ae.Code == api.CodeQuarantined {
			a.quarantined(ctx, ae)
		} else {
			a.log.Warn("watch ended; the data plane keeps its last map", "err", err, "revision", from)
		}
		a.metrics.watchResets.Inc()
		if time.Since(start) > 10*time.Second {
			backoff = 200 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(retryWait(backoff, err)):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// quarantined acts on the controller's refusal of a quarantined node: its
// peers have already dropped it, so the agent drops its peers too (as the
// empty map quarantined nodes used to be sent did) and keeps asking, in
// case an admin releases it.
func (a *Agent) quarantined(ctx context.Context, ae *api.Error) {
	a.mu.Lock()
	had := len(a.cur.Peers) > 0
	a.cur.Peers = nil
	a.cur.Revision = 0 // after a release, a full snapshot, not deltas to this changed map
	a.mu.Unlock()
	if !had {
		return
	}
	a.log.Error("this node is quarantined; its peers are removed until an admin releases it", "reason", ae.Message)
	if err := a.apply(ctx); err != nil {
		a.log.Error("removing the peers of a quarantined node", "err", err)
	}
}

func (a *Agent) onFrame(ctx context.Context, f api.Frame) error {
	switch f.Type {
	case api.FrameSnapshot:
		if f.Map == nil {
			return errors.New("snapshot frame without a map")
		}
		a.mu.Lock()
		a.cur = f.Map.Normalize()
		a.mu.Unlock()
	case api.FrameDelta:
		if f.Delta == nil {
			return errors.New("delta frame without a delta")
		}
		a.mu.Lock()
		if f.Revision < a.cur.Revision {
			a.mu.Unlock()
			return nil
		}
		// Deltas apply to the map just before them: the last applied one
		// when nothing is pending.
		incremental := a.ok && a.prev.Revision == a.cur.Revision
		a.cur = a.cur.Apply(*f.Delta)
		a.mu.Unlock()
		var d *netmap.Delta
		if incremental {
			d = f.Delta
		}
		if err := a.applyDelta(ctx, d); err != nil {
			a.log.Error("apply failed", "err", err)
		}
		return nil
	default:
		return nil
	}
	if err := a.apply(ctx); err != nil {
		// Keep streaming: the reconcile loop retries.
		a.log.Error("apply failed", "err", err)
	}
	return nil
}

func (a *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ReconcileEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := a.apply(ctx); err != nil {
				a.log.Error("reconcile failed", "err", err)
			}
		}
	}
}

// Applied returns the last applied map.
func (a *Agent) Applied() netmap.Map {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.prev
}

// Close releases the device handle (the interface stays).
func (a *Agent) Close() error {
	a.closeGuard()
	if a.dev != nil {
		return a.dev.Close()
	}
	return nil
}

// client returns the current control-channel client (it changes when the
// certificate is renewed).
func (a *Agent) client() *apiclient.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cli
}

// firewallStatus says whether this node enforces the policy.
func (a *Agent) firewallStatus() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fw == nil {
		return a.fwState
	}
	if a.fwErr != nil {
		return "error: " + a.fwErr.Error()
	}
	return a.fwState
}
