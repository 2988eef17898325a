package wg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// RunUserspace runs embedded wireguard-go devices over TUN, starting with
// ifname, each serving the standard UAPI socket
// (/var/run/wireguard/IFNAME.sock) so that `wg` and wgctrl configure it
// exactly like a kernel device. The agent runs it as a separate process
// (`statemesh wireguard-go IFNAME`) so the data plane survives agent
// restarts.
//
// The process is also the host's userspace WireGuard daemon: it serves a
// control socket (ControlSocket) on which the agent asks for more devices
// in the same network namespace, so that a host with many devices (a
// BIRD-mode gateway: sm0 and a device per backbone link) runs one Go
// process, not one per device. When the control socket is already served
// (another daemon of the namespace), the process runs its one device
// alone. It runs until ctx ends, SIGTERM/SIGINT arrive, or its last device
// is closed (deleting a device's interface closes it), and removes the
// interfaces' sockets on exit.
func RunUserspace(ctx context.Context, ifname string, mtu int, log *slog.Logger) error {
	d := &daemon{ctx: ctx, log: log, devs: map[string]*device.Device{}, uapis: map[string]net.Listener{}, empty: make(chan struct{})}
	if err := d.add(ifname, mtu); err != nil {
		return err
	}
	if ln, err := listenControl(); err != nil {
		log.Info("not serving the control socket: devices of this process are its own", "reason", err)
	} else {
		d.mu.Lock()
		d.ln = ln
		if d.closed {
			ln.Close()
		}
		d.mu.Unlock()
		go d.serve(ln)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	select {
	case <-ctx.Done():
	case s := <-sig:
		log.Info("userspace WireGuard daemon stopping", "signal", s.String())
	case <-d.empty:
	}
	d.closeAll()
	return nil
}

// daemon is the devices of one wireguard-go process.
type daemon struct {
	ctx context.Context
	log *slog.Logger

	mu     sync.Mutex // guards the fields below
	devs   map[string]*device.Device
	uapis  map[string]net.Listener // each device's UAPI socket
	ln     net.Listener
	closed bool          // no device is added any more
	empty  chan struct{} // closed when the last device went
}

// add creates a device and serves its UAPI socket; the device is removed
// from the daemon when it closes (its interface was deleted).
func (d *daemon) add(ifname string, mtu int) error {
	if mtu == 0 {
		mtu = device.DefaultMTU
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("the daemon is stopping")
	}
	if _, ok := d.devs[ifname]; ok {
		// Asked again for a device it has: the agent gave up on an
		// earlier request that finished later (a starved host), or the
		// device's UAPI socket is gone (an agent that saw no device
		// removes a dead daemon's socket, and may have done so while
		// this one came up). The device and its peers stay; its socket
		// is served again when it does not answer.
		if socketAlive(ifname) {
			return nil
		}
		d.log.Warn("serving a device's lost UAPI socket again", "interface", ifname)
		return d.serveUAPI(ifname, d.devs[ifname])
	}
	tdev, err := tun.CreateTUN(ifname, mtu)
	if err != nil {
		return fmt.Errorf("creating TUN %s: %w", ifname, err)
	}
	name, err := tdev.Name()
	if err != nil {
		tdev.Close()
		return err
	}
	level := device.LogLevelError
	if d.log.Enabled(d.ctx, slog.LevelDebug) {
		level = device.LogLevelVerbose
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(level, "("+name+") "))
	if err := d.serveUAPI(name, dev); err != nil {
		dev.Close()
		return err
	}
	d.devs[name] = dev
	go func() {
		<-dev.Wait()
		d.mu.Lock()
		if d.devs[name] == dev {
			if uapi := d.uapis[name]; uapi != nil {
				uapi.Close()
			}
			delete(d.uapis, name)
			delete(d.devs, name)
			os.Remove(socketPath(name))
			d.log.Info("userspace WireGuard device closed", "interface", name)
		}
		if len(d.devs) == 0 && !d.closed {
			// Nothing left: refuse new devices (the agent then starts a new
			// daemon) and end.
			d.closed = true
			if d.ln != nil {
				d.ln.Close()
			}
			close(d.empty)
		}
		d.mu.Unlock()
	}()
	d.log.Info("userspace WireGuard device up", "interface", name, "pid", os.Getpid(), "devices", len(d.devs))
	return nil
}

// serveUAPI serves dev's UAPI socket (/var/run/wireguard/NAME.sock),
// replacing one it served before. d.mu is held.
func (d *daemon) serveUAPI(name string, dev *device.Device) error {
	if old := d.uapis[name]; old != nil {
		// First: closing a UAPI listener unlinks its path, which would be
		// the new socket's.
		old.Close()
		delete(d.uapis, name)
	}
	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		return fmt.Errorf("opening UAPI socket for %s: %w", name, err)
	}
	uapi, err := ipc.UAPIListen(name, uapiFile)
	uapiFile.Close() // the listener has its own descriptor
	if err != nil {
		return fmt.Errorf("listening on UAPI socket for %s: %w", name, err)
	}
	d.uapis[name] = uapi
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	return nil
}

// closeAll closes every device and the control socket.
func (d *daemon) closeAll() {
	d.mu.Lock()
	devs := make([]*device.Device, 0, len(d.devs))
	for name, dev := range d.devs {
		devs = append(devs, dev)
		os.Remove(socketPath(name))
	}
	d.devs = map[string]*device.Device{}
	for _, uapi := range d.uapis {
		uapi.Close()
	}
	d.uapis = map[string]net.Listener{}
	if !d.closed {
		d.closed = true
		if d.ln != nil {
			d.ln.Close()
		}
	}
	d.mu.Unlock()
	for _, dev := range devs {
		dev.Close()
	}
}

// serve answers requests on the control socket: one line
// "add IFNAME MTU", answered "ok PID" or "error MESSAGE".
func (d *daemon) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			ifname, mtu, err := parseAdd(line)
			if err == nil {
				err = d.add(ifname, mtu)
			}
			if err != nil {
				d.log.Warn("adding a userspace WireGuard device", "request", strings.TrimSpace(line), "err", err)
				fmt.Fprintf(c, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
				return
			}
			fmt.Fprintf(c, "ok %d\n", os.Getpid())
		}()
	}
}

// parseAdd parses a control request "add IFNAME MTU".
func parseAdd(line string) (ifname string, mtu int, err error) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "add" {
		return "", 0, fmt.Errorf("bad request %q: want add IFNAME MTU", strings.TrimSpace(line))
	}
	if f[1] == "" || len(f[1]) > 15 || strings.ContainsAny(f[1], "/ ") {
		return "", 0, fmt.Errorf("bad interface name %q", f[1])
	}
	mtu, err = strconv.Atoi(f[2])
	if err != nil || mtu < 0 || mtu > 65535 {
		return "", 0, fmt.Errorf("bad MTU %q", f[2])
	}
	return f[1], mtu, nil
}

// ControlSocket is the control socket of the userspace WireGuard daemon of
// the network namespace with inode netnsIno. It is keyed by the namespace
// because /var/run/wireguard may be shared by namespaces (tests), and does
// not end in ".sock": wgctrl takes every *.sock there for a device.
func ControlSocket(netnsIno uint64) string {
	return fmt.Sprintf("%s/statemesh-wireguard-go.%d.ctl", SocketDir, netnsIno)
}

// netnsInode is the inode of the calling thread's network namespace.
func netnsInode() (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("reading the network namespace: %w", err)
	}
	return st.Ino, nil
}

// listenControl serves this namespace's control socket, unless a live
// daemon serves it already; a socket left by a dead daemon is replaced.
func listenControl() (net.Listener, error) {
	ino, err := netnsInode()
	if err != nil {
		return nil, err
	}
	path := ControlSocket(ino)
	if err := os.MkdirAll(SocketDir, 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err == nil {
		return ln, nil
	}
	if c, derr := net.Dial("unix", path); derr == nil {
		c.Close()
		return nil, fmt.Errorf("%s is served by another daemon", path)
	}
	os.Remove(path)
	return net.Listen("unix", path)
}

// errNoDaemon: no daemon serves the namespace's control socket.
var errNoDaemon = errors.New("no userspace WireGuard daemon in this namespace")

// addToDaemon asks the namespace's daemon (netnsIno) for a device; it
// returns the daemon's pid, or errNoDaemon when none answers.
func addToDaemon(netnsIno uint64, ifname string, mtu int) (int, error) {
	c, err := net.DialTimeout("unix", ControlSocket(netnsIno), 5*time.Second)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", errNoDaemon, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c, "add %s %d\n", ifname, mtu); err != nil {
		return 0, fmt.Errorf("%w: %v", errNoDaemon, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("%w: no answer: %v", errNoDaemon, err)
	}
	line = strings.TrimSpace(line)
	if rest, ok := strings.CutPrefix(line, "ok "); ok {
		pid, _ := strconv.Atoi(rest)
		return pid, nil
	}
	if rest, ok := strings.CutPrefix(line, "error "); ok && strings.Contains(rest, "the daemon is stopping") {
		return 0, fmt.Errorf("%w: %s", errNoDaemon, rest)
	}
	return 0, fmt.Errorf("the userspace WireGuard daemon refused %s: %s", ifname, strings.TrimPrefix(line, "error "))
}

// SocketDir is where userspace devices serve their UAPI sockets.
const SocketDir = "/var/run/wireguard"

func socketPath(ifname string) string { return SocketDir + "/" + ifname + ".sock" }

// socketAlive reports whether a userspace device answers on its socket.
func socketAlive(ifname string) bool {
	c, err := net.Dial("unix", socketPath(ifname))
	if err != nil {
		return false
	}
	c.Close()
	return true
}
