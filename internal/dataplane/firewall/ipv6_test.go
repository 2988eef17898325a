package firewall

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

// v6pair is two network namespaces joined by an IPv6-only veth (the
// underlay, "ul") and a second IPv6-only veth that stands in for the mesh
// interface on the node's side (named like it, so the ruleset's overlay
// chain judges what arrives on it).
type v6pair struct {
	node, nbr string // namespace names
}

const (
	v6Node     = "fd00:15::1"
	v6Nbr      = "fd00:15::2"
	v6Stranger = "fd00:15::3" // on the neighbour's side, not a WireGuard peer
	v6OvNode   = "fd7a::1"
	v6OvMember = "fd7a::2" // a member of segment web
	v6OvOther  = "fd7a::9" // in no segment
	v6Far      = "fd00:99::1"
)

func ipCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newV6Pair(t *testing.T) v6pair {
	t.Helper()
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1000000)
	p := v6pair{node: "smv6-fw" + tag + "n", nbr: "smv6-fw" + tag + "b"}
	for _, ns := range []string{p.node, p.nbr} {
		ipCmd(t, "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		// No duplicate address detection, also for link-local addresses:
		// the link works at once.
		if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0").CombinedOutput(); err != nil {
			t.Fatalf("sysctl: %v\n%s", err, out)
		}
	}
	ipCmd(t, "link", "add", "ul", "netns", p.node, "type", "veth", "peer", "name", "ul", "netns", p.nbr)
	ipCmd(t, "link", "add", "sm0", "netns", p.node, "type", "veth", "peer", "name", "ov", "netns", p.nbr)
	for _, c := range [][]string{
		{"-n", p.node, "link", "set", "lo", "up"}, {"-n", p.nbr, "link", "set", "lo", "up"},
		{"-n", p.node, "addr", "add", v6Node + "/64", "dev", "ul", "nodad"},
		{"-n", p.nbr, "addr", "add", v6Nbr + "/64", "dev", "ul", "nodad"},
		{"-n", p.nbr, "addr", "add", v6Stranger + "/64", "dev", "ul", "nodad"},
		{"-n", p.node, "addr", "add", v6OvNode + "/64", "dev", "sm0", "nodad"},
		{"-n", p.nbr, "addr", "add", v6OvMember + "/64", "dev", "ov", "nodad"},
		{"-n", p.nbr, "addr", "add", v6OvOther + "/64", "dev", "ov", "nodad"},
		{"-n", p.node, "link", "set", "ul", "up"}, {"-n", p.nbr, "link", "set", "ul", "up"},
		{"-n", p.node, "link", "set", "sm0", "up"}, {"-n", p.nbr, "link", "set", "ov", "up"},
		// A destination beyond the neighbour, for the packet-too-big check.
		{"-n", p.node, "-6", "route", "add", "fd00:99::/64", "via", v6Nbr},
	} {
		ipCmd(t, c...)
	}
	return p
}

// in runs fn with the calling goroutine's thread in namespace name:
// sockets fn opens stay in that namespace.
func in(t *testing.T, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer netns.Set(orig)
	fn()
}

// v6State is a node on an IPv6-only underlay: one WireGuard peer (the
// neighbour), tcp/22 allowed on the underlay (as in the README's quick
// start), and a policy that lets segment web reach tcp/5432 and ping.
func v6State() State {
	p := netip.MustParsePrefix
	return State{
		Interface: "sm0", ListenPort: 51820,
		Peers:         []netip.Addr{netip.MustParseAddr(v6Nbr)},
		UnderlayAllow: []netmap.PortRange{{Proto: "tcp", From: 22, To: 22}},
		Policy: &netmap.Firewall{
			Rules: []netmap.FirewallRule{{Comment: "rule web-db: web -> db", Set: "seg_web",
				Ports: []netmap.PortRange{{Proto: "tcp", From: 5432, To: 5432}, {Proto: "icmp"}}}},
			Sets: map[string][]netip.Prefix{"seg_web": {p(v6OvMember + "/128")}},
		},
	}
}

// icmpSink records the ICMPv6 messages that reach the node's stack (a raw
// socket sees a packet only after the input hook accepted it).
type icmpSink struct {
	mu   sync.Mutex
	seen map[string]bool // "SRC TYPE"
}

func (s *icmpSink) saw(src string, typ int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[fmt.Sprintf("%s %d", src, typ)]
}

func listenICMP(t *testing.T) *icmpSink {
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &icmpSink{seen: map[string]bool{}}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 0 {
				s.mu.Lock()
				s.seen[fmt.Sprintf("%s %d", from.(*net.IPAddr).IP, buf[0])] = true
				s.mu.Unlock()
			}
		}
	}()
	return s
}

// sendICMP sends one ICMPv6 message from src (in the current namespace)
// to dst; the kernel fills in the checksum.
func sendICMP(t *testing.T, src, dst string, m icmp.Message) {
	t.Helper()
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", src)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := m.Marshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: net.ParseIP(dst)}); err != nil {
		t.Fatalf("sending ICMPv6 type %v from %s: %v", m.Type, src, err)
	}
}

// tooBig is an ICMPv6 packet-too-big (MTU 1400) about a packet the node
// sent to v6Far, which it never did: no connection relates to it.
func tooBig() icmp.Message {
	inner := make([]byte, 40+8)
	inner[0] = 0x60
	inner[5] = 8 // payload length
	inner[6] = 58
	inner[7] = 64
	copy(inner[8:24], net.ParseIP(v6Node).To16())
	copy(inner[24:40], net.ParseIP(v6Far).To16())
	inner[40] = byte(ipv6.ICMPTypeEchoRequest)
	return icmp.Message{Type: ipv6.ICMPTypePacketTooBig, Body: &icmp.PacketTooBig{MTU: 1400, Data: inner}}
}

// nodeInfo is an ICMPv6 type connection tracking accepts as new, like
// echo, but that no rule allowing "icmp" (echo) means.
const nodeInfo = int(ipv6.ICMPTypeNodeInformationQuery)

func dialOK(t *testing.T, ns, src, dst string, port int) bool {
	ok := false
	in(t, ns, func() {
		d := net.Dialer{Timeout: 700 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp6", net.JoinHostPort(dst, fmt.Sprint(port)))
		if err == nil {
			c.Close()
			ok = true
		}
	})
	return ok
}

// TestIssue15IPv6UnderlayNeighbours loads the rendered ruleset with the
// real nft into a node whose only underlay is IPv6 and proves, with real
// packets: the node resolves its neighbour (neighbour discovery passes)
// and reaches it; WireGuard from the known peer and the operator's tcp/22
// pass, a stranger's WireGuard and other ports are dropped; echo passes
// where a rule says icmp but other ICMPv6 types do not; an unsolicited
// packet-too-big reaches the stack and lowers the path MTU; on the mesh
// interface the policy's tcp/5432 and echo pass for the segment's member
// and nothing passes for others.
func TestIssue15IPv6UnderlayNeighbours(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	testenv.RequireBinary(t, "ip")
	testenv.RequireBinary(t, "ping")
	p := newV6Pair(t)
	var sink *icmpSink
	var udp *net.UDPConn
	in(t, p.node, func() {
		f, err := New(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Apply(context.Background(), v6State()); err != nil {
			t.Fatal(err)
		}
		for _, port := range []int{22, 23, 5432, 5433} {
			l, err := net.Listen("tcp6", fmt.Sprintf("[::]:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}
		if udp, err = net.ListenUDP("udp6", &net.UDPAddr{Port: 51820}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { udp.Close() })
		sink = listenICMP(t)
	})

	// Neighbour discovery: the node pings its neighbour (the reply is
	// established), which needs the node to resolve it and to answer its
	// solicitations.
	out, err := exec.Command("ip", "netns", "exec", p.node, "ping", "-6", "-c", "3", "-i", "0.2", "-w", "5", v6Nbr).CombinedOutput()
	if err != nil {
		t.Errorf("node pings its IPv6 neighbour: %v\n%s\nneighbours: %s", err, out, ipCmd(t, "-n", p.node, "-6", "neigh", "show", "dev", "ul"))
	}
	if n := ipCmd(t, "-n", p.node, "-6", "neigh", "show", v6Nbr, "dev", "ul"); !strings.Contains(n, "REACHABLE") {
		t.Errorf("neighbour entry after the ping: %q, want REACHABLE", n)
	}

	// Underlay: what the ruleset allows passes, the rest is dropped.
	if !dialOK(t, p.nbr, v6Nbr, v6Node, 22) {
		t.Error("tcp/22 (--underlay-allow) over the IPv6 underlay was dropped")
	}
	if dialOK(t, p.nbr, v6Nbr, v6Node, 23) {
		t.Error("tcp/23 (not allowed) over the IPv6 underlay passed")
	}
	got := map[string]bool{}
	var mu sync.Mutex
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := udp.ReadFromUDP(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got[from.IP.String()+" "+string(buf[:n])] = true
			mu.Unlock()
		}
	}()
	in(t, p.nbr, func() {
		for _, src := range []string{v6Nbr, v6Stranger} {
			c, err := net.DialUDP("udp6", &net.UDPAddr{IP: net.ParseIP(src)}, &net.UDPAddr{IP: net.ParseIP(v6Node), Port: 51820})
			if err != nil {
				t.Fatal(err)
			}
			c.Write([]byte("wg"))
			c.Close()
		}
		// ICMPv6: echo (not allowed on this underlay), an unsolicited
		// packet-too-big (always allowed).
		sendICMP(t, v6Nbr, v6Node, icmp.Message{Type: ipv6.ICMPTypeEchoRequest, Body: &icmp.Echo{ID: 7, Seq: 1, Data: []byte("x")}})
		sendICMP(t, v6Nbr, v6Node, tooBig())
	})
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	if !got[v6Nbr+" wg"] {
		t.Error("WireGuard (udp/51820) from the known peer was dropped")
	}
	if got[v6Stranger+" wg"] {
		t.Error("WireGuard from an address that is no peer passed")
	}
	mu.Unlock()
	if sink.saw(v6Nbr, int(ipv6.ICMPTypeEchoRequest)) {
		t.Error("ICMPv6 echo request passed on an underlay that does not allow icmp")
	}
	if !sink.saw(v6Nbr, int(ipv6.ICMPTypePacketTooBig)) {
		t.Error("ICMPv6 packet-too-big was dropped: path MTU discovery breaks")
	}
	if r := ipCmd(t, "-n", p.node, "-6", "route", "get", v6Far); !strings.Contains(r, "mtu 1400") {
		t.Errorf("after the packet-too-big the route to %s should carry mtu 1400: %s", v6Far, r)
	}

	// Overlay (the mesh interface): the policy.
	if !dialOK(t, p.nbr, v6OvMember, v6OvNode, 5432) {
		t.Error("overlay: tcp/5432 from a member of web was dropped")
	}
	for _, c := range []struct {
		src  string
		port int
	}{{v6OvMember, 5433}, {v6OvOther, 5432}} {
		if dialOK(t, p.nbr, c.src, v6OvNode, c.port) {
			t.Errorf("overlay: tcp/%d from %s passed", c.port, c.src)
		}
	}
	in(t, p.nbr, func() {
		for _, src := range []string{v6OvMember, v6OvOther} {
			sendICMP(t, src, v6OvNode, icmp.Message{Type: ipv6.ICMPTypeEchoRequest, Body: &icmp.Echo{ID: 8, Seq: 1, Data: []byte("x")}})
			sendICMP(t, src, v6OvNode, icmp.Message{Type: ipv6.ICMPTypeNodeInformationQuery, Body: &icmp.RawBody{Data: []byte("xxxx")}})
		}
	})
	time.Sleep(300 * time.Millisecond)
	if !sink.saw(v6OvMember, int(ipv6.ICMPTypeEchoRequest)) {
		t.Error("overlay: echo from a member of web (rule allows icmp) was dropped")
	}
	for _, c := range []struct {
		src string
		typ int
	}{{v6OvMember, nodeInfo}, {v6OvOther, int(ipv6.ICMPTypeEchoRequest)}, {v6OvOther, nodeInfo}} {
		if sink.saw(c.src, c.typ) {
			t.Errorf("overlay: ICMPv6 type %d from %s passed", c.typ, c.src)
		}
	}

	// --underlay-allow icmp: echo passes, other types do not.
	in(t, p.node, func() {
		s := v6State()
		s.UnderlayAllow = append(s.UnderlayAllow, netmap.PortRange{Proto: "icmp"})
		f, err := New(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Apply(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	})
	in(t, p.nbr, func() {
		sendICMP(t, v6Stranger, v6Node, icmp.Message{Type: ipv6.ICMPTypeEchoRequest, Body: &icmp.Echo{ID: 9, Seq: 1, Data: []byte("x")}})
		sendICMP(t, v6Stranger, v6Node, icmp.Message{Type: ipv6.ICMPTypeNodeInformationQuery, Body: &icmp.RawBody{Data: []byte("xxxx")}})
	})
	time.Sleep(300 * time.Millisecond)
	if !sink.saw(v6Stranger, int(ipv6.ICMPTypeEchoRequest)) {
		t.Error("underlay allows icmp: the echo request was dropped")
	}
	if sink.saw(v6Stranger, nodeInfo) {
		t.Error("underlay allows icmp: a node information query passed (icmp means echo)")
	}
	if t.Failed() {
		out, _ := exec.Command("ip", "netns", "exec", p.node, "nft", "list", "table", "inet", Table).CombinedOutput()
		t.Logf("ruleset:\n%s", out)
	}
}

// TestIssue15IPv4FragmentationNeededPasses: the IPv4 twin of the
// packet-too-big check. An unsolicited ICMP fragmentation-needed (MTU
// 1400) about a packet the node "sent" to a far address reaches the stack
// through the rendered ruleset and lowers the route's MTU.
func TestIssue15IPv4FragmentationNeededPasses(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	testenv.RequireBinary(t, "ip")
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1000000)
	node, nbr := "smv6-fw"+tag+"n4", "smv6-fw"+tag+"b4"
	for _, ns := range []string{node, nbr} {
		ipCmd(t, "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	ipCmd(t, "link", "add", "ul", "netns", node, "type", "veth", "peer", "name", "ul", "netns", nbr)
	for _, c := range [][]string{
		{"-n", node, "addr", "add", "172.16.15.1/24", "dev", "ul"}, {"-n", nbr, "addr", "add", "172.16.15.2/24", "dev", "ul"},
		{"-n", node, "link", "set", "ul", "up"}, {"-n", nbr, "link", "set", "ul", "up"},
		{"-n", node, "route", "add", "198.51.100.0/24", "via", "172.16.15.2"},
	} {
		ipCmd(t, c...)
	}
	in(t, node, func() {
		f, err := New(nil)
		if err != nil {
			t.Fatal(err)
		}
		s := v6State()
		s.Peers = []netip.Addr{netip.MustParseAddr("172.16.15.2")}
		if err := f.Apply(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	})
	// Inner packet: an echo reply 172.16.15.1 → 198.51.100.1 (the kernel
	// updates the path MTU for inner ICMP only when it was a reply it sent).
	inner := make([]byte, 20+8)
	inner[0], inner[3], inner[8], inner[9] = 0x45, 28, 64, 1
	copy(inner[12:16], net.ParseIP("172.16.15.1").To4())
	copy(inner[16:20], net.ParseIP("198.51.100.1").To4())
	inner[20] = 0 // echo reply
	in(t, nbr, func() {
		c, err := icmp.ListenPacket("ip4:icmp", "172.16.15.2")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Destination unreachable, code 4 (fragmentation needed), next-hop MTU 1400.
		m := icmp.Message{Type: ipv4.ICMPTypeDestinationUnreachable, Code: 4, Body: &icmp.DstUnreach{Data: inner}}
		b, err := m.Marshal(nil)
		if err != nil {
			t.Fatal(err)
		}
		b[6], b[7] = 1400>>8, 1400&0xff
		// Marshal computed the checksum without the MTU: recompute.
		b[2], b[3] = 0, 0
		sum := icmpChecksum(b)
		b[2], b[3] = byte(sum>>8), byte(sum)
		if _, err := c.WriteTo(b, &net.IPAddr{IP: net.ParseIP("172.16.15.1")}); err != nil {
			t.Fatal(err)
		}
	})
	time.Sleep(300 * time.Millisecond)
	if r := ipCmd(t, "-n", node, "route", "get", "198.51.100.1"); !strings.Contains(r, "mtu 1400") {
		t.Errorf("after the fragmentation-needed the route to 198.51.100.1 should carry mtu 1400: %s", r)
	}
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
