package link

import (
	"crypto/rand"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/statemesh/statemesh/internal/testenv"
)

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestForwardingNeedsBothFamilies: a host with IPv4 forwarding on and
// IPv6 forwarding off does not forward as a gateway must; enabling
// forwarding turns IPv6 on too (issue 15: a gateway that had
// net.ipv4.ip_forward=1 before its agent started dropped the mesh's IPv6).
func TestForwardingNeedsBothFamilies(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "ip")
	b := make([]byte, 3)
	rand.Read(b)
	ns := fmt.Sprintf("smtest-fwd-%x", b)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "-n", ns, "link", "add", "smt0", "type", "veth", "peer", "name", "smt1")
	run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=0")
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := New("smt0", h)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	st, err := l.State()
	if err != nil || st.Forwarding {
		t.Fatalf("IPv4 on, IPv6 off: forwarding %v (%v), want false", st.Forwarding, err)
	}
	on := true
	if _, err := l.Apply(Changes{Forwarding: &on}); err != nil {
		t.Fatal(err)
	}
	if v := run(t, "ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv6.conf.all.forwarding"); v != "1" {
		t.Errorf("IPv6 forwarding %s after enabling forwarding", v)
	}
	if st, err := l.State(); err != nil || !st.Forwarding {
		t.Errorf("after enabling: forwarding %v (%v)", st.Forwarding, err)
	}
}
