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
