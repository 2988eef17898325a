package lab

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Client is an external WireGuard client of the lab: a namespace on the
// WAN (a laptop on the internet) brought up with stock wg-quick from the
// file `statemesh client add` wrote.
type Client struct {
	Name    string     `json:"name"`
	Region  string     `json:"region"`
	Segment string     `json:"segment"`
	WAN     netip.Addr `json:"wan"`
	// Address and Address6 are the client's mesh addresses (from its
	// configuration; IPv6 when the mesh has IPv6 overlay addresses).
	Address  netip.Addr `json:"address"`
	Address6 netip.Addr `json:"address6,omitzero"`
	Conf     string     `json:"conf"`
	// Removed: revoked with statemesh client remove; checks expect it to
	// reach nothing.
	Removed bool `json:"removed,omitempty"`
}

// ClientIface is the WireGuard interface of a lab client (wg-quick takes
// it from the file name).
const ClientIface = "smc0"

// NS is the client's network namespace.
func (c *Client) NS() string { return nsPrefix + "cl-" + c.Name }

// HolderKey is the client's key in State.Holders.
func (c *Client) HolderKey() string { return "client:" + c.Name }

// wgUserspace is what wg-quick runs when the kernel has no WireGuard
// (WG_QUICK_USERSPACE_IMPLEMENTATION): StateMesh's embedded wireguard-go,
// in the background, ready once its control socket exists.
const wgUserspace = `#!/bin/sh
# Started by wg-quick as: $0 IFNAME
"%s" wireguard-go "$1" >>"%s" 2>&1 &
i=0
while [ ! -S "/var/run/wireguard/$1.sock" ]; do
  i=$((i+1)); [ $i -gt 200 ] && exit 1
  sleep 0.05
done
`

// AddClient registers an external client with the real CLI (statemesh
// client add --out FILE) and brings it up in its own namespace on the WAN
// with wg-quick and that file.
func (l *Lab) AddClient(ctx context.Context, name, region, segment string) (*Client, error) {
	cfg := l.State.Config
	idx := len(l.State.Clients)
	c := &Client{Name: name, Region: region, Segment: segment, WAN: wanAddr(cfg.Underlay6(), 200+idx)}
	dir := filepath.Join(cfg.Dir, "clients", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c.Conf = filepath.Join(dir, ClientIface+".conf")
	os.Remove(c.Conf)
	if err := l.addNS(c.NS()); err != nil {
		return nil, err
	}
	if err := veth(c.NS(), "wan0", wanSwitch, fmt.Sprintf("cl%d", idx), cfg.WANMTU, withBits(c.WAN)); err != nil {
		return nil, err
	}
	holder, err := startHolder(c.NS(), filepath.Join(cfg.Dir, "holders.log"))
	if err != nil {
		return nil, err
	}
	l.State.mu.Lock()
	l.State.Holders[c.HolderKey()] = holder
	l.State.Clients = append(l.State.Clients, c)
	l.State.mu.Unlock()
	if err := l.State.save(); err != nil {
		return nil, err
	}
	if err := waitHolder(holder, time.Now().Add(10*time.Second)); err != nil {
		return nil, fmt.Errorf("client %s: %w", name, err)
	}
	argv := []string{cfg.Binary, "client", "add", name, "--region", region, "--out", c.Conf, "--config", l.State.AdminConfig}
	if segment != "" {
		argv = append(argv, "--segment", segment)
	}
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out)
	}
	if c.Address, c.Address6, err = confAddresses(c.Conf); err != nil {
		return nil, err
	}
	wrapper := filepath.Join(dir, "wireguard-go")
	script := fmt.Sprintf(wgUserspace, cfg.Binary, filepath.Join(dir, "wireguard-go.log"))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		return nil, err
	}
	up := append(nsenterArgs(holder), "env", "WG_QUICK_USERSPACE_IMPLEMENTATION="+wrapper, "wg-quick", "up", c.Conf)
	if out, err := exec.CommandContext(ctx, up[0], up[1:]...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("wg-quick up %s: %w: %s", c.Conf, err, out)
	}
	return c, l.State.save()
}

// RemoveClient revokes a client with the real CLI (statemesh client
// remove); its namespace stays up, so checks can show it reaches nothing.
func (l *Lab) RemoveClient(ctx context.Context, name string) error {
	c := l.client(name)
	if c == nil {
		return fmt.Errorf("no lab client %q", name)
	}
	argv := []string{l.State.Config.Binary, "client", "remove", name, "--config", l.State.AdminConfig}
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out)
	}
	l.State.mu.Lock()
	c.Removed = true
	l.State.mu.Unlock()
	return l.State.save()
}

func (l *Lab) client(name string) *Client {
	for _, c := range l.State.Clients {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// confAddresses reads the IPv4 and IPv6 (if any) addresses of a wg-quick
// file's [Interface].
func confAddresses(path string) (v4, v6 netip.Addr, err error) {
	f, err := os.Open(path)
	if err != nil {
		return v4, v6, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok || strings.TrimSpace(k) != "Address" {
			continue
		}
		for _, a := range strings.Split(v, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(a))
			switch {
			case err != nil:
			case p.Addr().Is4() && !v4.IsValid():
				v4 = p.Addr()
			case p.Addr().Is6() && !v6.IsValid():
				v6 = p.Addr()
			}
		}
	}
	if !v4.IsValid() {
		return v4, v6, fmt.Errorf("%s has no IPv4 Address", path)
	}
	return v4, v6, nil
}
