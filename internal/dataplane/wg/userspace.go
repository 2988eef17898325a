package wg

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// RunUserspace runs an embedded wireguard-go device named ifname over TUN,
// serving the standard UAPI socket (/var/run/wireguard/IFNAME.sock) so that
// `wg` and wgctrl configure it exactly like a kernel device. It runs until
// ctx ends, SIGTERM/SIGINT arrive, or the device is closed, and removes the
// interface on exit. The agent runs it as a separate process
// (`statemesh wireguard-go IFNAME`) so the data plane survives agent
// restarts.
func RunUserspace(ctx context.Context, ifname string, mtu int, log *slog.Logger) error {
	if mtu == 0 {
		mtu = device.DefaultMTU
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
	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		tdev.Close()
		return fmt.Errorf("opening UAPI socket for %s: %w", name, err)
	}
	level := device.LogLevelError
	if log.Enabled(ctx, slog.LevelDebug) {
		level = device.LogLevelVerbose
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(level, "("+name+") "))
	uapi, err := ipc.UAPIListen(name, uapiFile)
	if err != nil {
		dev.Close()
		return fmt.Errorf("listening on UAPI socket for %s: %w", name, err)
	}
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	log.Info("userspace WireGuard device up", "interface", name, "pid", os.Getpid())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	select {
	case <-ctx.Done():
	case s := <-sig:
		log.Info("userspace WireGuard device stopping", "interface", name, "signal", s.String())
	case <-dev.Wait():
	}
	uapi.Close()
	dev.Close()
	os.Remove(socketPath(name))
	return nil
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
