package pathprobe

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/statemesh/statemesh/internal/testenv"
)

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestProberFindsTheNarrowLink builds A —1500— R —1400— B in network
// namespaces and measures A→B: the echoes answer, and the path MTU found
// is the narrow link's, below A's interface MTU.
func TestProberFindsTheNarrowLink(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "ip")
	p := fmt.Sprintf("smpp%d", time.Now().UnixNano()%100000)
	a, r, b := p+"a", p+"r", p+"b"
	for _, ns := range []string{a, r, b} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	sh(t, "ip", "link", "add", "ar", "netns", a, "type", "veth", "peer", "name", "ra", "netns", r)
	sh(t, "ip", "link", "add", "rb", "netns", r, "mtu", "1400", "type", "veth", "peer", "name", "vb", "netns", b, "mtu", "1400")
	for _, c := range [][]string{
		{"-n", a, "addr", "add", "10.91.0.1/24", "dev", "ar"}, {"-n", a, "link", "set", "ar", "up"},
		{"-n", a, "route", "add", "default", "via", "10.91.0.2"},
		{"-n", r, "addr", "add", "10.91.0.2/24", "dev", "ra"}, {"-n", r, "link", "set", "ra", "up"},
		{"-n", r, "addr", "add", "10.92.0.2/24", "dev", "rb"}, {"-n", r, "link", "set", "rb", "up"},
		{"-n", b, "addr", "add", "10.92.0.1/24", "dev", "vb"}, {"-n", b, "link", "set", "vb", "up"},
		{"-n", b, "route", "add", "default", "via", "10.92.0.2"},
	} {
		sh(t, append([]string{"ip"}, c...)...)
	}
	sh(t, "ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	nsA, err := netns.GetFromName(a)
	if err != nil {
		t.Fatal(err)
	}
	defer nsA.Close()
	if err := netns.Set(nsA); err != nil {
		t.Fatal(err)
	}
	pr, err := NewProber()
	netns.Set(orig) // the socket stays in A
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	res := pr.Measure(context.Background(), netip.MustParseAddr("10.92.0.1"), 1500, Options{Timeout: 500 * time.Millisecond})
	if res.Loss != 0 || res.RTT <= 0 {
		t.Fatalf("small echoes: %+v", res)
	}
	if res.PathMTU != 1400 {
		t.Fatalf("path MTU %d, want 1400 (the R—B link): %+v", res.PathMTU, res)
	}
	// Nothing answers at an address nobody has.
	if res := pr.Measure(context.Background(), netip.MustParseAddr("10.92.0.9"), 1500, Options{Echoes: 2, Timeout: 200 * time.Millisecond}); res.Loss != 1 || res.PathMTU != 0 {
		t.Fatalf("unreachable target: %+v", res)
	}
}

// TestIssue15ProberFindsTheNarrowIPv6Link is the same path over IPv6 only:
// A —1500— R —1400— B. IPv6 routers never fragment: R drops the large
// echoes (and tells A with a packet-too-big the probes ignore), so the
// search finds the narrow link's 1400, searching from IPv6's 1280.
func TestIssue15ProberFindsTheNarrowIPv6Link(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "ip")
	p := fmt.Sprintf("smv6-pp%d", time.Now().UnixNano()%100000)
	a, r, b := p+"a", p+"r", p+"b"
	for _, ns := range []string{a, r, b} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		// No duplicate address detection, also for the link-local
		// addresses R's neighbour discovery uses: the path works at once.
		sh(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
	}
	sh(t, "ip", "link", "add", "ar", "netns", a, "type", "veth", "peer", "name", "ra", "netns", r)
	sh(t, "ip", "link", "add", "rb", "netns", r, "mtu", "1400", "type", "veth", "peer", "name", "vb", "netns", b, "mtu", "1400")
	for _, c := range [][]string{
		{"-n", a, "addr", "add", "fd00:91::1/64", "dev", "ar", "nodad"}, {"-n", a, "link", "set", "ar", "up"},
		{"-n", a, "-6", "route", "add", "default", "via", "fd00:91::2"},
		{"-n", r, "addr", "add", "fd00:91::2/64", "dev", "ra", "nodad"}, {"-n", r, "link", "set", "ra", "up"},
		{"-n", r, "addr", "add", "fd00:92::2/64", "dev", "rb", "nodad"}, {"-n", r, "link", "set", "rb", "up"},
		{"-n", b, "addr", "add", "fd00:92::1/64", "dev", "vb", "nodad"}, {"-n", b, "link", "set", "vb", "up"},
		{"-n", b, "-6", "route", "add", "default", "via", "fd00:92::2"},
	} {
		sh(t, append([]string{"ip"}, c...)...)
	}
	sh(t, "ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	// Fresh veths hold the first packets about a second while neighbour
	// discovery settles: wait until the path answers, so the probes
	// measure the path, not the links coming up.
	testenv.RequireBinary(t, "ping")
	if out, err := exec.Command("ip", "netns", "exec", a, "ping", "-6", "-c", "1", "-w", "5", "fd00:92::1").CombinedOutput(); err != nil {
		t.Fatalf("the path does not come up: %v\n%s", err, out)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	nsA, err := netns.GetFromName(a)
	if err != nil {
		t.Fatal(err)
	}
	defer nsA.Close()
	if err := netns.Set(nsA); err != nil {
		t.Fatal(err)
	}
	pr, err := NewProber()
	netns.Set(orig) // the sockets stay in A
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	if !pr.IPv6() {
		t.Fatal("no IPv6 probe socket in a namespace with IPv6")
	}
	res := pr.Measure(context.Background(), netip.MustParseAddr("fd00:92::1"), 1500, Options{Timeout: 500 * time.Millisecond})
	if res.Loss != 0 || res.RTT <= 0 {
		t.Fatalf("small echoes: %+v", res)
	}
	if res.PathMTU != 1400 {
		t.Fatalf("path MTU %d, want 1400 (the R—B link): %+v", res.PathMTU, res)
	}
	// A second measurement is not fooled by the path MTU the kernel
	// learned from R's packet-too-big.
	if res := pr.Measure(context.Background(), netip.MustParseAddr("fd00:92::1"), 1500, Options{Timeout: 500 * time.Millisecond}); res.PathMTU != 1400 {
		t.Fatalf("second measurement: path MTU %d, want 1400", res.PathMTU)
	}
	if res := pr.Measure(context.Background(), netip.MustParseAddr("fd00:92::9"), 1500, Options{Echoes: 2, Timeout: 200 * time.Millisecond}); res.Loss != 1 || res.PathMTU != 0 {
		t.Fatalf("unreachable target: %+v", res)
	}
}
