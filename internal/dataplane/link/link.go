// Package link owns the kernel state around the WireGuard interface that is
// not WireGuard itself: the link (MTU, up), its addresses, the routes that
// point into it and IP forwarding, all through netlink. Routes StateMesh
// installs carry RouteProtocol, so it finds and removes only its own.
package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks routes StateMesh owns (see /etc/iproute2/rt_protos;
// `ip route show proto 158`).
const RouteProtocol = 158

// Link manages one interface.
type Link struct {
	name string
	ns   netns.NsHandle
	h    *netlink.Handle
}

// New returns a manager for the interface name in ns (0: the caller's).
func New(name string, ns netns.NsHandle) (*Link, error) {
	var h *netlink.Handle
	var err error
	if ns > 0 {
		h, err = netlink.NewHandleAt(ns)
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &Link{name: name, ns: ns, h: h}, nil
}

// Close releases the netlink handle.
func (l *Link) Close() { l.h.Close() }

// CreateWireGuard creates a kernel WireGuard interface.
func (l *Link) CreateWireGuard() error {
	err := l.h.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: l.name}})
	if err != nil {
		return fmt.Errorf("ip link add %s type wireguard: %w", l.name, err)
	}
	return nil
}

// Exists reports whether the interface exists.
func (l *Link) Exists() bool {
	_, err := l.h.LinkByName(l.name)
	return err == nil
}

// Delete removes the interface; a missing one is not an error.
func (l *Link) Delete() error {
	lk, err := l.h.LinkByName(l.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return l.h.LinkDel(lk)
}

// State is the interface's current kernel state.
type State struct {
	MTU        int
	Up         bool
	Addresses  []netip.Prefix
	Routes     []netip.Prefix
	Forwarding bool
}

func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// State reads the interface (zero State when it does not exist).
func (l *Link) State() (State, error) {
	lk, err := l.h.LinkByName(l.name)
	if err != nil {
		return State{}, nil
	}
	st := State{MTU: lk.Attrs().MTU, Up: lk.Attrs().Flags&net.FlagUp != 0}
	addrs, err := l.h.AddrList(lk, netlink.FAMILY_ALL)
	if err != nil {
		return st, fmt.Errorf("listing addresses of %s: %w", l.name, err)
	}
	for _, a := range addrs {
		p := prefixOf(a.IPNet)
		if p.Addr().IsLinkLocalUnicast() {
			continue
		}
		st.Addresses = append(st.Addresses, p)
	}
	routes, err := l.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: lk.Attrs().Index, Protocol: RouteProtocol}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return st, fmt.Errorf("listing routes of %s: %w", l.name, err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			st.Routes = append(st.Routes, prefixOf(r.Dst))
		}
	}
	st.Forwarding, err = l.forwarding()
	return st, err
}

// Changes to make.
type Changes struct {
	MTU        *int
	Up         bool
	AddAddrs   []netip.Prefix
	DelAddrs   []netip.Prefix
	AddRoutes  []netip.Prefix
	DelRoutes  []netip.Prefix
	Forwarding *bool
}

// Apply makes the changes and returns how many operations it made.
func (l *Link) Apply(c Changes) (int, error) {
	lk, err := l.h.LinkByName(l.name)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", l.name, err)
	}
	n := 0
	if c.MTU != nil {
		if err := l.h.LinkSetMTU(lk, *c.MTU); err != nil {
			return n, fmt.Errorf("setting MTU %d on %s: %w", *c.MTU, l.name, err)
		}
		n++
	}
	for _, p := range c.DelAddrs {
		if err := l.h.AddrDel(lk, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return n, fmt.Errorf("removing %s from %s: %w", p, l.name, err)
		}
		n++
	}
	for _, p := range c.AddAddrs {
		if err := l.h.AddrReplace(lk, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
			return n, fmt.Errorf("adding %s to %s: %w", p, l.name, err)
		}
		n++
	}
	if c.Up {
		if err := l.h.LinkSetUp(lk); err != nil {
			return n, fmt.Errorf("bringing %s up: %w", l.name, err)
		}
		n++
	}
	for _, p := range c.DelRoutes {
		r := &netlink.Route{LinkIndex: lk.Attrs().Index, Dst: ipNet(p), Protocol: RouteProtocol}
		if err := l.h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			return n, fmt.Errorf("removing route %s: %w", p, err)
		}
		n++
	}
	for _, p := range c.AddRoutes {
		r := &netlink.Route{LinkIndex: lk.Attrs().Index, Dst: ipNet(p), Protocol: RouteProtocol, Scope: netlink.SCOPE_LINK}
		if err := l.h.RouteReplace(r); err != nil {
			return n, fmt.Errorf("adding route %s dev %s: %w", p, l.name, err)
		}
		n++
	}
	if c.Forwarding != nil {
		if err := l.setForwarding(*c.Forwarding); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

var forwardingFiles = []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"}

// forwarding reports whether the host forwards in every family it has (a
// host without IPv6 has no IPv6 file). IPv4 forwarding alone is not
// forwarding: a gateway whose IPv4 was on before the agent started would
// otherwise never get IPv6 forwarding, and drop the mesh's IPv6.
func (l *Link) forwarding() (bool, error) {
	on := true
	err := Do(l.ns, func() error {
		for i, f := range forwardingFiles {
			b, err := os.ReadFile(f)
			if i > 0 && errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			on = on && strings.TrimSpace(string(b)) == "1"
		}
		return nil
	})
	return on, err
}

func (l *Link) setForwarding(on bool) error {
	v := "0\n"
	if on {
		v = "1\n"
	}
	return Do(l.ns, func() error {
		for _, f := range forwardingFiles {
			if err := os.WriteFile(f, []byte(v), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("enabling forwarding (%s): %w", f, err)
			}
		}
		return nil
	})
}

// Do runs fn on an OS thread switched into ns (or directly when ns is not
// open).
func Do(ns netns.NsHandle, fn func() error) error {
	if ns <= 0 {
		return fn()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		return err
	}
	defer netns.Set(orig)
	return fn()
}
