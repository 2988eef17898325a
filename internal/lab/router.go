package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/birdcfg"
)

// In BIRD mode the lab has an operator's router: a BIRD in its own
// namespace on the first region's underlay, the external BGP peer of that
// region's gateways (regions[0].bgp.externalPeers). It takes what they
// announce and announces nothing.
const (
	// RouterName is the router's name in lab commands (lab birdc router).
	RouterName = "router"
	// RouterASN is the operator's AS.
	RouterASN = 64512
)

// RouterAddr is the router's underlay address: 172.16.1.250, or
// fd00:172:16:1::250 on an IPv6 underlay.
func (c *Config) RouterAddr() netip.Addr { return underlayAddr(c.Underlay6(), 1, 250) }

// routerID is the router's BGP router ID (an IPv4-shaped number whatever
// the underlay).
var routerID = netip.MustParseAddr("172.16.1.250")

func (l *Lab) routerDir() string { return filepath.Join(l.State.Config.Dir, RouterName) }

// RouterSocket is the router's BIRD control socket.
func (l *Lab) RouterSocket() string { return filepath.Join(l.routerDir(), "bird.ctl") }

// routerConfig peers with every gateway of the first region.
func (l *Lab) routerConfig(regionASN uint32) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# The lab's operator router: learns the region's prefixes, announces nothing.\nrouter id %s;\n", routerID)
	b.WriteString("protocol device { scan time 10; }\n")
	iv := l.State.Config.BFDInterval
	if iv == 0 {
		iv = 100 * time.Millisecond
	}
	fmt.Fprintf(&b, "protocol bfd { interface \"*\" { interval %d ms; multiplier 3; }; }\n", iv.Milliseconds())
	cfg := &l.State.Config
	// The channels of what the region announces: IPv4 always; IPv6 when
	// the mesh has IPv6 prefixes. Over an IPv6 session IPv4 comes with
	// IPv6 next hops (extended next hop, RFC 8950), as the gateways send
	// it; over an IPv4 session the IPv6 channel is not opened (the
	// gateways' next hop would be IPv4-mapped).
	channels := "  ipv4 { import all; export none; };\n"
	if cfg.Underlay6() {
		channels = "  ipv4 { import all; export none; extended next hop on; };\n"
		if cfg.Pods6() {
			channels += "  ipv6 { import all; export none; };\n"
		}
	}
	for _, h := range l.State.Hosts {
		if h.Role != "gateway" || h.Region != regionNames[0] {
			continue
		}
		fmt.Fprintf(&b, "protocol bgp %s {\n  local %s as %d;\n  neighbor %s as %d;\n  bfd on;\n%s}\n",
			strings.ReplaceAll(h.Name, "-", "_"), cfg.RouterAddr(), RouterASN, h.Underlay, regionASN, channels)
	}
	return b.String()
}

// router starts the operator's router (BIRD mode only).
func (l *Lab) router(ctx context.Context) error {
	cfg := l.State.Config
	if !cfg.BGP {
		return nil
	}
	ns := nsPrefix + RouterName
	if err := l.addNS(ns); err != nil {
		return err
	}
	if err := veth(ns, "eth0", regionSwitch(regionNames[0]), "rt0", cfg.UnderlayMTU, withBits(cfg.RouterAddr())); err != nil {
		return err
	}
	dir := l.routerDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	conf := []byte(l.routerConfig(regionASN))
	if err := birdcfg.Check(ctx, conf); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	confPath := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "bird.log")
	pid, err := startDetached([]string{"ip", "netns", "exec", ns, "bird", "-f", "-c", confPath, "-s", l.RouterSocket(), "-P", filepath.Join(dir, "bird.pid")}, logPath, nil)
	if err != nil {
		return err
	}
	return l.State.addProc(Proc{Name: "bird", Host: RouterName, PID: pid, Log: logPath})
}

// regionASN is the first region's AS: the spec's default (the lab sets
// none).
const regionASN = 4200000000

// RouterBirdc runs birdc against the operator's router.
func (l *Lab) RouterBirdc(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "birdc", append([]string{"-s", l.RouterSocket()}, args...)...).CombinedOutput()
	return string(out), err
}
