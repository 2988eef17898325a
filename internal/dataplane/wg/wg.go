// Package wg owns the node's WireGuard interface: it creates it (the kernel
// module through netlink when the kernel has it, otherwise embedded
// wireguard-go in its own process), adopts an existing one, and applies a
// network map with the minimum operations computed by dataplane/wgplan: one
// wgctrl operation per peer that changed, never a rewrite of all peers,
// never an overwrite of a roamed endpoint. Addresses, MTU, routes and
// forwarding go through netlink (package link).
package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/statemesh/statemesh/internal/dataplane/link"
	"github.com/statemesh/statemesh/internal/dataplane/wgplan"
	"github.com/statemesh/statemesh/internal/netmap"
)

// Modes of the WireGuard implementation.
const (
	ModeAuto      = "auto"
	ModeKernel    = "kernel"
	ModeUserspace = "userspace"
)

// Config configures a device.
type Config struct {
	Interface  string
	Mode       string
	PrivateKey netmap.Key
	// UserspaceCommand starts the userspace daemon for the interface; the
	// interface name is appended. Default: this executable with the
	// argument "wireguard-go".
	UserspaceCommand []string
	UserspaceEnv     []string
	// LogDir receives the userspace daemon's log (default: the system temp
	// dir).
	LogDir string
	// NetNS, when set, is the network namespace the device lives in (tests);
	// by default the caller's.
	NetNS  netns.NsHandle
	Logger *slog.Logger
}

// Device is the node's WireGuard interface.
type Device struct {
	cfg  Config
	log  *slog.Logger
	wg   *wgctrl.Client
	link *link.Link
	mode string
}

// Result counts what an Apply changed.
type Result struct {
	PeerOps   int
	Added     int
	Updated   int
	Removed   int
	OtherOps  int
	Duration  time.Duration
	Created   bool
	NoChanges bool
}

// Open prepares to manage the interface; it creates nothing yet.
func Open(cfg Config) (*Device, error) {
	if cfg.Interface == "" {
		return nil, errors.New("wg: no interface name")
	}
	if len(cfg.Interface) > 15 {
		return nil, fmt.Errorf("wg: interface name %q is longer than 15 characters", cfg.Interface)
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeAuto
	}
	switch cfg.Mode {
	case ModeAuto, ModeKernel, ModeUserspace:
	default:
		return nil, fmt.Errorf("wg: mode %q: use kernel, userspace or auto", cfg.Mode)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("opening wgctrl: %w", err)
	}
	l, err := link.New(cfg.Interface, cfg.NetNS)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &Device{cfg: cfg, log: cfg.Logger, wg: c, link: l}, nil
}

// Close releases handles; the interface stays.
func (d *Device) Close() error {
	d.link.Close()
	return d.wg.Close()
}

// Mode returns the implementation in use ("kernel" or "userspace"), once
// the device exists.
func (d *Device) Mode() string { return d.mode }

// exists reports whether the interface is there and configurable. Once
// the implementation is known it avoids reading the whole device.
func (d *Device) exists() bool {
	switch d.mode {
	case ModeUserspace:
		return socketAlive(d.cfg.Interface)
	case ModeKernel:
		return d.link.Exists()
	}
	_, err := d.wg.Device(d.cfg.Interface)
	return err == nil
}

// ensure creates the interface when it does not exist.
func (d *Device) ensure(ctx context.Context, mtu int) (created bool, err error) {
	if d.exists() {
		if d.mode == "" {
			d.mode = ModeUserspace
			if _, err := os.Stat(socketPath(d.cfg.Interface)); err != nil {
				d.mode = ModeKernel
			}
		}
		return false, nil
	}
	// A dead userspace daemon leaves a socket and maybe nothing else.
	os.Remove(socketPath(d.cfg.Interface))
	if d.cfg.Mode != ModeUserspace {
		err := d.link.CreateWireGuard()
		if err == nil {
			d.mode = ModeKernel
			d.log.Info("created kernel WireGuard interface", "interface", d.cfg.Interface)
			return true, nil
		}
		if d.cfg.Mode == ModeKernel {
			return false, fmt.Errorf("creating kernel WireGuard interface: %w", err)
		}
		d.log.Info("kernel WireGuard unavailable; using embedded wireguard-go", "reason", err)
	}
	if err := d.startUserspace(ctx, mtu); err != nil {
		return false, err
	}
	d.mode = ModeUserspace
	return true, nil
}

// startUserspace creates a userspace device: in the namespace's running
// wireguard-go daemon when there is one (one process for all of a host's
// devices), otherwise in a new daemon process.
func (d *Device) startUserspace(ctx context.Context, mtu int) error {
	var ino uint64
	err := link.Do(d.cfg.NetNS, func() (err error) { ino, err = netnsInode(); return err })
	if err != nil {
		return err
	}
	pid, err := addToDaemon(ino, d.cfg.Interface, mtu)
	switch {
	case err == nil:
		if err := d.waitUserspace(ctx, "the daemon's log"); err != nil {
			return err
		}
		d.log.Info("added userspace WireGuard device to the host's wireguard-go", "interface", d.cfg.Interface, "pid", pid)
		return nil
	case !errors.Is(err, errNoDaemon):
		return err
	}
	argv := d.cfg.UserspaceCommand
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		argv = []string{exe, "wireguard-go"}
	}
	argv = append(append([]string{}, argv...), d.cfg.Interface)
	logDir := d.cfg.LogDir
	if logDir == "" {
		logDir = os.TempDir()
	}
	logPath := filepath.Join(logDir, "wireguard-go-"+d.cfg.Interface+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), d.cfg.UserspaceEnv...)
	cmd.Env = append(cmd.Env, fmt.Sprintf("STATEMESH_WG_MTU=%d", mtu))
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own session: the data plane outlives the agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = link.Do(d.cfg.NetNS, func() error { return cmd.Start() })
	if err != nil {
		return fmt.Errorf("starting userspace WireGuard (%v): %w", argv, err)
	}
	pid = cmd.Process.Pid
	go cmd.Wait() // reap if it exits while we run
	if err := d.waitUserspace(ctx, logPath); err != nil {
		return err
	}
	d.log.Info("started userspace WireGuard", "interface", d.cfg.Interface, "pid", pid, "log", logPath)
	return nil
}

// waitUserspace waits (10 s at most) until the device answers on its UAPI
// socket.
func (d *Device) waitUserspace(ctx context.Context, logPath string) error {
	deadline := time.Now().Add(10 * time.Second)
	for !d.exists() {
		if time.Now().After(deadline) {
			return fmt.Errorf("userspace WireGuard for %s did not come up in 10s; see %s", d.cfg.Interface, logPath)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func toPrefixes(ns []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ns))
	for _, n := range ns {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		bits, _ := n.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), bits))
	}
	return out
}

func toIPNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		out[i] = net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	return out
}

func toAddrPort(u *net.UDPAddr) netip.AddrPort {
	if u == nil {
		return netip.AddrPort{}
	}
	ap := u.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Actual reads the device's actual state.
func (d *Device) Actual() (wgplan.Device, error) {
	dev, err := d.wg.Device(d.cfg.Interface)
	if err != nil {
		return wgplan.Device{}, nil
	}
	out := wgplan.Device{Exists: true, PublicKey: netmap.Key(dev.PublicKey), ListenPort: dev.ListenPort}
	for _, p := range dev.Peers {
		out.Peers = append(out.Peers, wgplan.Peer{
			PublicKey: netmap.Key(p.PublicKey), Endpoint: toAddrPort(p.Endpoint),
			AllowedIPs:          toPrefixes(p.AllowedIPs),
			PersistentKeepalive: int(p.PersistentKeepaliveInterval / time.Second),
		})
	}
	st, err := d.link.State()
	if err != nil {
		return out, err
	}
	out.MTU, out.Up, out.Addresses, out.Routes, out.Forwarding = st.MTU, st.Up, st.Addresses, st.Routes, st.Forwarding
	return out, nil
}

// peerBatch is how many peer operations go into one wgctrl call. Each
// operation still touches only its own peer.
const peerBatch = 256

// Apply makes the device match desired. prev is the map applied before
// (its endpoints decide which endpoints may be written).
func (d *Device) Apply(ctx context.Context, desired, prev netmap.Map) (Result, error) {
	start := time.Now()
	var res Result
	created, err := d.ensure(ctx, desired.Interface.MTU)
	if err != nil {
		return res, err
	}
	res.Created = created
	actual, err := d.Actual()
	if err != nil {
		return res, err
	}
	ops := wgplan.Compute(desired, prev, actual, d.cfg.PrivateKey.PublicKey())
	return d.execute(ops, desired.Revision, start, res)
}

// ApplyDelta applies one delta without reading the device: it assumes the
// device holds prev (the last map applied) and makes it hold next. Its cost
// is proportional to the delta, not to the number of peers. Callers run a
// full Apply periodically to repair drift.
func (d *Device) ApplyDelta(ctx context.Context, prev, next netmap.Map, delta netmap.Delta) (Result, error) {
	start := time.Now()
	created, err := d.ensure(ctx, next.Interface.MTU)
	if err != nil {
		return Result{}, err
	}
	if created {
		// A new device holds nothing: apply everything.
		return d.Apply(ctx, next, netmap.Map{})
	}
	return d.execute(wgplan.FromDelta(prev, next, delta), next.Revision, start, Result{})
}

// execute carries out operations: one wgctrl call per batch of peer
// operations (each touching only its own peer), then the link changes.
func (d *Device) execute(ops wgplan.Ops, revision int64, start time.Time, res Result) (Result, error) {
	if ops.Empty() {
		res.NoChanges = true
		res.Duration = time.Since(start)
		return res, nil
	}
	if ops.SetKey || ops.ListenPort != nil {
		cfg := wgtypes.Config{}
		if ops.SetKey {
			k := wgtypes.Key(d.cfg.PrivateKey)
			cfg.PrivateKey = &k
		}
		if ops.ListenPort != nil {
			cfg.ListenPort = ops.ListenPort
		}
		if err := d.wg.ConfigureDevice(d.cfg.Interface, cfg); err != nil {
			return res, fmt.Errorf("configuring %s key/port: %w", d.cfg.Interface, err)
		}
		res.OtherOps++
	}
	for i := 0; i < len(ops.Peers); i += peerBatch {
		batch := ops.Peers[i:min(i+peerBatch, len(ops.Peers))]
		cfg := wgtypes.Config{Peers: make([]wgtypes.PeerConfig, 0, len(batch))}
		for _, op := range batch {
			pc := wgtypes.PeerConfig{PublicKey: wgtypes.Key(op.PublicKey)}
			switch op.Kind {
			case wgplan.OpRemove:
				pc.Remove = true
				res.Removed++
			case wgplan.OpUpdate:
				pc.UpdateOnly = true
				res.Updated++
			case wgplan.OpAdd:
				res.Added++
			}
			if op.Endpoint != nil {
				pc.Endpoint = net.UDPAddrFromAddrPort(*op.Endpoint)
			}
			if op.ReplaceIPs {
				pc.ReplaceAllowedIPs = true
				pc.AllowedIPs = toIPNets(op.AllowedIPs)
			}
			if op.Keepalive != nil {
				k := time.Duration(*op.Keepalive) * time.Second
				pc.PersistentKeepaliveInterval = &k
			}
			cfg.Peers = append(cfg.Peers, pc)
		}
		if err := d.wg.ConfigureDevice(d.cfg.Interface, cfg); err != nil {
			return res, fmt.Errorf("configuring %d peers on %s: %w", len(batch), d.cfg.Interface, err)
		}
		res.PeerOps += len(batch)
	}
	n, err := d.link.Apply(link.Changes{
		MTU: ops.MTU, Up: ops.Up, AddAddrs: ops.AddAddrs, DelAddrs: ops.DelAddrs,
		AddRoutes: ops.AddRoutes, DelRoutes: ops.DelRoutes, Forwarding: ops.Forwarding,
	})
	res.OtherOps += n
	res.Duration = time.Since(start)
	if err != nil {
		return res, err
	}
	d.log.Debug("applied map", "interface", d.cfg.Interface, "revision", revision, "added", res.Added, "updated", res.Updated, "removed", res.Removed, "other", res.OtherOps, "took", res.Duration)
	return res, nil
}

// PeerStatus is a peer's live state.
type PeerStatus struct {
	PublicKey     netmap.Key
	Endpoint      netip.AddrPort
	LastHandshake time.Time
	RxBytes       int64
	TxBytes       int64
}

// Status reads the peers' live state.
func (d *Device) Status() ([]PeerStatus, error) {
	dev, err := d.wg.Device(d.cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", d.cfg.Interface, err)
	}
	out := make([]PeerStatus, len(dev.Peers))
	for i, p := range dev.Peers {
		out[i] = PeerStatus{PublicKey: netmap.Key(p.PublicKey), Endpoint: toAddrPort(p.Endpoint), LastHandshake: p.LastHandshakeTime, RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes}
	}
	return out, nil
}

// Delete removes the interface (and stops a userspace daemon: closing its
// TUN ends it).
func (d *Device) Delete() error {
	err := d.link.Delete()
	os.Remove(socketPath(d.cfg.Interface))
	return err
}
