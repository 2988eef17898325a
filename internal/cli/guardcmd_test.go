package cli

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/dataplane/ebpffw"
	"github.com/statemesh/statemesh/internal/dataplane/guardplan"
	"github.com/statemesh/statemesh/internal/dataplane/xdpguard"
	"github.com/statemesh/statemesh/internal/testenv"
)

// statemesh guard prints what a running guard's pinned maps hold.
func TestGuardCommand(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a bpf filesystem: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	pins := filepath.Join(dir, "eth0")
	g, err := xdpguard.Load(xdpguard.Options{MaxSources: 64, MaxTracked: 64, PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	e, err := guardplan.Compile(guardplan.Input{WireGuardPorts: []int{51820}, Peers: []netip.Addr{netip.MustParseAddr("192.0.2.2")},
		WireGuardFrom: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, Local: []netip.Addr{netip.MustParseAddr("192.0.2.1")},
		HandshakesPerSource: 20, HandshakesTotal: 1000, WindowNanos: 1e9, EphemeralFrom: 32768, EphemeralTo: 60999})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Set(e); err != nil {
		t.Fatal(err)
	}
	fwPins := filepath.Join(dir, "sm0")
	f, err := ebpffw.Load(ebpffw.Options{MaxSources: 64, MaxFlows: 64, PinDir: fwPins})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := run(t, "", "guard", "--pin-dir", pins, "--firewall-pin-dir", fwPins)
	for _, want := range []string{"eBPF firewall: " + fwPins, "established", "denied"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("statemesh guard: no %q in\n%s%s", want, r.stdout, r.stderr)
		}
	}
	for _, want := range []string{"udp/51820", "192.0.2.2/32", "10.0.0.0/16", "wireguard", "192.0.2.1", "wg_ratelimited", "20 handshakes/s"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("statemesh guard: no %q in\n%s%s", want, r.stdout, r.stderr)
		}
	}
	t.Log("\n" + r.stdout)
	if r := run(t, "", "guard", "--pin-dir", filepath.Join(dir, "nothing")); r.code == 0 || !strings.Contains(r.stderr, "no guard maps pinned") {
		t.Errorf("no guard: %+v", r)
	}
}
