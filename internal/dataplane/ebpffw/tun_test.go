package ebpffw

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/statemesh/statemesh/internal/dataplane/firewall"
	"github.com/statemesh/statemesh/internal/dataplane/fwplan"
	"github.com/statemesh/statemesh/internal/testenv"
)

// ipv4Checksum fills in an IPv4 header's checksum (the stack checks it).
func ipv4Checksum(pkt []byte) []byte {
	pkt[10], pkt[11] = 0, 0
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pkt[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(pkt[10:], ^uint16(sum))
	return pkt
}

// TestOnTunWithNFTables runs the firewall where it runs on a node: on an
// L3 interface (a TUN device standing in for WireGuard) in an smx-
// namespace, in front of StateMesh's nftables table with the mark rule.
// Real packets come in through the device; what reaches the sockets is
// the same with the eBPF firewall as with nftables alone: a member of an
// allowed set reaches the port, a stranger does not, the reply to the
// node's own request does.
func TestOnTunWithNFTables(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	ns := fmt.Sprintf("smx-%d-fw", os.Getpid())
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, c := range [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "tuntap", "add", "dev", "tun0", "mode", "tun"},
		{"ip", "-n", ns, "addr", "add", "100.64.0.5/32", "dev", "tun0"},
		{"ip", "-n", ns, "link", "set", "tun0", "up"},
		{"ip", "-n", ns, "route", "add", "100.64.0.0/16", "dev", "tun0"},
		{"ip", "-n", ns, "route", "add", "192.0.2.0/24", "dev", "tun0"},
	} {
		sh(t, c...)
	}
	var tun *os.File
	var app, ops *net.UDPConn
	inNS(t, ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq("tun0")
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return err
		}
		tun = os.NewFile(uintptr(fd), "tun0")
		if app, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("100.64.0.5"), Port: 53}); err != nil {
			return err
		}
		ops, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("100.64.0.5"), Port: 5000})
		return err
	})
	defer tun.Close()
	defer app.Close()
	defer ops.Close()
	go func() { // drain what the node sends into the tunnel
		buf := make([]byte, 2048)
		for {
			if _, err := tun.Read(buf); err != nil {
				return
			}
		}
	}()

	fw := policy()
	// nftables' interval sets refuse overlapping members.
	fw.Sets["seg_app"] = []netip.Prefix{netip.MustParsePrefix("100.64.2.0/24"), netip.MustParsePrefix("fd7a:1::/64")}
	member, stranger := netip.MustParseAddr("100.64.2.9"), netip.MustParseAddr("192.0.2.1")
	nftFile := func(mark uint32) string {
		fake := knftables.NewFake(knftables.InetFamily, firewall.Table)
		if err := firewall.NewWith(fake, nil).Apply(context.Background(), firewall.State{Interface: "tun0", ListenPort: 51820, Policy: fw, EBPFMark: mark}); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "t.nft")
		os.WriteFile(path, []byte(fake.Dump()), 0o600)
		return path
	}
	deliveredTo := func(c *net.UDPConn, from netip.Addr, sport, dport uint16) bool {
		tun.Write(ipv4Checksum(udp(from, netip.MustParseAddr("100.64.0.5"), sport, dport, []byte("hello"))[14:]))
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 64)
		_, _, err := c.ReadFromUDP(buf)
		return err == nil
	}
	check := func(mode string, port int) {
		t.Helper()
		if !deliveredTo(app, member, 40000, 53) {
			t.Errorf("%s: the app member's DNS query did not arrive", mode)
		}
		if deliveredTo(app, stranger, 40000, 53) {
			t.Errorf("%s: a stranger's DNS query arrived", mode)
		}
		// The node asks the stranger; the answer is established.
		if _, err := ops.WriteToUDP([]byte("q"), &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: port}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		if !deliveredTo(ops, stranger, uint16(port), 5000) {
			t.Errorf("%s: the reply to the node's own query did not arrive", mode)
		}
	}

	// nftables alone.
	sh(t, "ip", "netns", "exec", ns, "nft", "-f", nftFile(0))
	check("nftables", 53)
	sh(t, "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", firewall.Table)

	// eBPF in front of the table with the mark rule.
	f, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e, _ := fwplan.Compile(fw)
	if err := f.Set(e, State{Dests: []netip.Prefix{netip.MustParsePrefix("100.64.0.5/32")}, UDPWarm: true}); err != nil {
		t.Fatal(err)
	}
	inNS(t, ns, func() error { return f.Attach("tun0") })
	sh(t, "ip", "netns", "exec", ns, "nft", "-f", nftFile(DefaultMark))
	check("ebpf", 853)
	c, _ := f.Counters()
	t.Logf("eBPF firewall counters: %v", c)
	if c[VerdictAllowed] < 1 || c[VerdictDenied] < 1 || c[VerdictEstablished] < 1 {
		t.Errorf("counters %v: want an allowed, a denied and an established packet", c)
	}
	// nftables' overlay drop counter saw nothing: the program dropped.
	if out := sh(t, "ip", "netns", "exec", ns, "nft", "list", "chain", "inet", firewall.Table, "overlay"); !strings.Contains(out, "counter packets 0") {
		t.Errorf("nftables dropped what the program should have:\n%s", out)
	}
}
