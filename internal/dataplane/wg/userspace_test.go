package wg

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

func TestParseAdd(t *testing.T) {
	for _, tc := range []struct {
		line    string
		ifname  string
		mtu     int
		wantErr bool
	}{
		{line: "add smbb3 1420\n", ifname: "smbb3", mtu: 1420},
		{line: "add sm0 0", ifname: "sm0", mtu: 0},
		{line: "add smbb3\n", wantErr: true},
		{line: "del smbb3 1420\n", wantErr: true},
		{line: "add a-name-of-16-chr 1420\n", wantErr: true},
		{line: "add ../x 1420\n", wantErr: true},
		{line: "add smbb3 -1\n", wantErr: true},
		{line: "add smbb3 mtu\n", wantErr: true},
	} {
		t.Run(tc.line, func(t *testing.T) {
			ifname, mtu, err := parseAdd(tc.line)
			if (err != nil) != tc.wantErr || ifname != tc.ifname || mtu != tc.mtu {
				t.Fatalf("parseAdd(%q) = %q, %d, %v", tc.line, ifname, mtu, err)
			}
		})
	}
}

// nsInode is the inode of a network namespace handle.
func nsInode(t *testing.T, h netns.NsHandle) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(h), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// daemonPIDs are the test's userspace WireGuard daemons (this binary with
// STATEMESH_TEST_WG_DAEMON) running in the network namespace ino.
func daemonPIDs(t *testing.T, ino uint64) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !bytes.Contains(env, []byte("STATEMESH_TEST_WG_DAEMON=1\x00")) {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) == nil && st.Ino == ino {
			pids = append(pids, pid)
		}
	}
	return pids
}

// connectedPair is two hosts with userspace devices that ping each other.
func connectedPair(t *testing.T) (a, b *host) {
	t.Helper()
	testenv.RequireBinary(t, "ping")
	a, b = newPair(t)
	if _, err := a.dev.Apply(context.Background(), mapFor(a, b), netmap.Map{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.dev.Apply(context.Background(), mapFor(b, a), netmap.Map{}); err != nil {
		t.Fatal(err)
	}
	waitPing(t, a.ns, b.ovl)
	return a, b
}

// TestUserspaceDevicesShareOneProcess: a host's userspace devices run in one
// wireguard-go process (the first one started serves the others), each
// with its own UAPI socket and traffic; two namespaces sharing
// /var/run/wireguard get a process each; the process outlives the agent's
// handles (an agent restart) and takes the next device, loses none when
// one device is deleted, and ends with its last device. Before, every
// device was a process of its own (200 on the gateways of a 10-region
// BIRD-mode lab).
func TestUserspaceDevicesShareOneProcess(t *testing.T) {
	a, b := connectedPair(t)
	ctx := context.Background()
	inoA, inoB := nsInode(t, a.handle), nsInode(t, b.handle)
	if p := daemonPIDs(t, inoA); len(p) != 1 {
		t.Fatalf("namespace a: daemons %v, want 1", p)
	}
	if p := daemonPIDs(t, inoB); len(p) != 1 {
		t.Fatalf("namespace b: daemons %v, want 1 of its own", p)
	}
	daemonA := daemonPIDs(t, inoA)[0]

	// A second device on each host, as a backbone link: its own port,
	// addresses and routes.
	second := func(h *host, ovl string) *host {
		k, _ := netmap.GeneratePrivateKey()
		h2 := &host{ns: h.ns, handle: h.handle, ifname: "smx" + h.ifname[3:], key: k, addr: h.addr, ovl: netip.MustParseAddr(ovl)}
		d, err := Open(Config{Interface: h2.ifname, Mode: ModeUserspace, PrivateKey: k, NetNS: h.handle,
			UserspaceCommand: []string{os.Args[0]}, UserspaceEnv: []string{"STATEMESH_TEST_WG_DAEMON=1"}, LogDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		h2.dev = d
		t.Cleanup(func() { d.Delete(); d.Close() })
		return h2
	}
	map2 := func(self, peer *host) netmap.Map {
		m := mapFor(self, peer)
		m.Interface.ListenPort = 51821
		m.Peers[0].Endpoint = netip.AddrPortFrom(peer.addr, 51821)
		m.Routes = []netip.Prefix{netip.MustParsePrefix("100.65.0.0/16")}
		return m.Normalize()
	}
	a2, b2 := second(a, "100.65.0.1"), second(b, "100.65.0.2")
	// The agent restarts between the two: new handles, same daemon.
	a.dev.Close()
	d, err := Open(Config{Interface: a.ifname, Mode: ModeUserspace, PrivateKey: a.key, NetNS: a.handle})
	if err != nil {
		t.Fatal(err)
	}
	a.dev = d
	for _, x := range []struct {
		h *host
		m netmap.Map
	}{{a2, map2(a2, b2)}, {b2, map2(b2, a2)}} {
		r, err := x.h.dev.Apply(ctx, x.m, netmap.Map{})
		if err != nil || !r.Created {
			t.Fatalf("second device %s: %+v %v", x.h.ifname, r, err)
		}
	}
	waitPing(t, a.ns, b2.ovl)
	waitPing(t, a.ns, b.ovl)
	if p := daemonPIDs(t, inoA); len(p) != 1 || p[0] != daemonA {
		t.Fatalf("namespace a after a second device: daemons %v, want only %d", p, daemonA)
	}
	if p := daemonPIDs(t, inoB); len(p) != 1 {
		t.Fatalf("namespace b after a second device: daemons %v, want 1", p)
	}
	for _, ifname := range []string{a.ifname, a2.ifname} {
		if _, err := os.Stat(socketPath(ifname)); err != nil {
			t.Errorf("UAPI socket of %s: %v", ifname, err)
		}
	}

	// Deleting the first device leaves the second and the process.
	if err := a.dev.Delete(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	waitPing(t, a.ns, b2.ovl)
	if p := daemonPIDs(t, inoA); len(p) != 1 || p[0] != daemonA {
		t.Fatalf("namespace a after deleting %s: daemons %v, want %d", a.ifname, p, daemonA)
	}
	// Deleting the last one ends it.
	if err := a2.dev.Delete(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(daemonPIDs(t, inoA)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("namespace a: daemon %v still running without devices", daemonPIDs(t, inoA))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(ControlSocket(inoA)); err == nil {
		t.Errorf("control socket %s left behind", ControlSocket(inoA))
	}
}

// TestUserspaceDeviceAskedForAgain: an agent that asks the host's daemon
// for a device it already runs (its earlier request finished after the
// agent gave up, or the device's UAPI socket was removed by an agent that
// saw no device while it came up) gets the device back, configurable, in
// the same process, and traffic flows. Before, the daemon answered
// "already a device of this daemon" for ever: seen on a starved 20-region
// BIRD-mode lab's gateways ("backbone link smbb544 ... refused").
func TestUserspaceDeviceAskedForAgain(t *testing.T) {
	a, b := connectedPair(t)
	ctx := context.Background()
	daemons := daemonPIDs(t, nsInode(t, a.handle))
	if len(daemons) != 1 {
		t.Fatalf("daemons %v, want 1", daemons)
	}
	ino := nsInode(t, a.handle)

	// Asked again while its socket answers: ok, the same device.
	if _, err := addToDaemon(ino, a.ifname, 1420); err != nil {
		t.Fatalf("asking for a running device again: %v", err)
	}
	// Its socket removed: asked again, the daemon serves it again.
	if err := os.Remove(socketPath(a.ifname)); err != nil {
		t.Fatal(err)
	}
	a.dev.Close()
	d, err := Open(Config{Interface: a.ifname, Mode: ModeUserspace, PrivateKey: a.key, NetNS: a.handle,
		UserspaceCommand: []string{os.Args[0]}, UserspaceEnv: []string{"STATEMESH_TEST_WG_DAEMON=1"}, LogDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a.dev = d
	m := mapFor(a, b)
	m.Peers[0].PersistentKeepalive = 5 // a change the device must take
	if _, err := a.dev.Apply(ctx, m.Normalize(), netmap.Map{}); err != nil {
		t.Fatalf("applying after the device's socket was lost: %v", err)
	}
	if !socketAlive(a.ifname) {
		t.Fatal("the device's UAPI socket does not answer")
	}
	dev, err := a.dev.wg.Device(a.ifname)
	if err != nil || len(dev.Peers) != 1 || dev.Peers[0].PersistentKeepaliveInterval != 5*time.Second {
		t.Fatalf("device after re-serving: %+v %v", dev, err)
	}
	if p := daemonPIDs(t, ino); len(p) != 1 || p[0] != daemons[0] {
		t.Fatalf("daemons %v, want only %d", p, daemons[0])
	}
	waitPing(t, a.ns, b.ovl)
}
