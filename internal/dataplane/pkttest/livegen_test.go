package pkttest

import (
	"bytes"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/statemesh/statemesh/internal/testenv"
)

// TestGeneratorDeliversDatagrams sends frames made by Datagram out of a
// veth with the Generator and counts them at a UDP socket behind the
// peer: the frames are real (the peer's stack verified their checksums and
// delivered them) and every one was sent.
func TestGeneratorDeliversDatagrams(t *testing.T) {
	testenv.RequireRoot(t)
	a, b := "smx-gen-a", "smx-gen-b"
	for _, ns := range []string{a, b} {
		exec.Command("ip", "netns", "del", ns).Run()
		Sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	Sh(t, "ip", "-n", a, "link", "add", "g0", "type", "veth", "peer", "name", "g1", "netns", b)
	Sh(t, "ip", "-n", a, "addr", "add", "10.98.0.1/24", "dev", "g0")
	Sh(t, "ip", "-n", b, "addr", "add", "10.98.0.2/24", "dev", "g1")
	Sh(t, "ip", "-n", a, "link", "set", "g0", "up")
	Sh(t, "ip", "-n", b, "link", "set", "g1", "up")

	for _, fam := range []struct {
		src, dst netip.AddrPort
	}{
		{netip.MustParseAddrPort("10.98.0.1:40000"), netip.MustParseAddrPort("10.98.0.2:51820")},
		{netip.MustParseAddrPort("[fd98::1]:40000"), netip.MustParseAddrPort("[fd98::2]:51820")},
	} {
		if fam.src.Addr().Is6() {
			Sh(t, "ip", "-n", a, "addr", "add", "fd98::1/64", "dev", "g0", "nodad")
			Sh(t, "ip", "-n", b, "addr", "add", "fd98::2/64", "dev", "g1", "nodad")
		}
		payload := []byte("a datagram from the generator, " + fam.dst.String())
		frame := Datagram(mac(t, a, "g0"), mac(t, b, "g1"), fam.src, fam.dst, payload)

		var conn *net.UDPConn
		InNS(t, b, func() (err error) {
			if conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(fam.dst)); err != nil {
				return err
			}
			// Each frame becomes a socket buffer of a whole page: room for
			// all of them (SO_RCVBUFFORCE, root).
			raw, err := conn.SyscallConn()
			if err != nil {
				return err
			}
			var serr error
			if err := raw.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
			}); err != nil {
				return err
			}
			return serr
		})
		// The veth delivers XDP frames only to a peer that runs NAPI: an
		// XDP program that passes everything, in native mode.
		var l link.Link
		InNS(t, b, func() error {
			ifc, err := net.InterfaceByName("g1")
			if err != nil {
				return err
			}
			l, err = PassXDP(ifc.Index)
			return err
		})

		gen, err := NewGenerator(frame)
		if err != nil {
			t.Fatal(err)
		}
		const n = 1000
		InNS(t, a, func() error {
			ifc, err := net.InterfaceByName("g0")
			if err != nil {
				return err
			}
			return gen.Send(ifc.Index, n)
		})
		got := 0
		buf := make([]byte, 2048)
		for {
			conn.SetReadDeadline(time.Now().Add(time.Second))
			k, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if !bytes.Equal(buf[:k], payload) || from.Addr().Unmap() != fam.src.Addr() || from.Port() != fam.src.Port() {
				t.Errorf("received %q from %s, want %q from %s", buf[:k], from, payload, fam.src)
			}
			got++
		}
		if got != n {
			t.Errorf("%s: the socket received %d of %d datagrams", fam.dst, got, n)
		}
		gen.Close()
		l.Close()
		conn.Close()
	}
}

func mac(t *testing.T, ns, ifname string) [6]byte {
	t.Helper()
	f := strings.Fields(Sh(t, "ip", "-n", ns, "-o", "link", "show", ifname))
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			hw, err := net.ParseMAC(f[i+1])
			if err == nil && len(hw) == 6 {
				return [6]byte(hw)
			}
		}
	}
	t.Fatalf("no MAC address for %s in %s", ifname, ns)
	return [6]byte{}
}
