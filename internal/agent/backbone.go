package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/statemesh/statemesh/internal/birdcfg"
	"github.com/statemesh/statemesh/internal/dataplane/wg"
	"github.com/statemesh/statemesh/internal/netmap"
)

// backbonePrefix names the backbone link interfaces (smbbN).
const backbonePrefix = "smbb"

// BackbonePrefix names a BIRD-mode gateway's backbone WireGuard interfaces
// (BackbonePrefix + link index); the node firewall opens their ports.
const BackbonePrefix = backbonePrefix

// linkMap is one backbone link as a WireGuard map: the link's /31, one
// peer (the other gateway) allowed to send anything, no routes (BIRD
// installs them) and forwarding on (the gateway forwards either way).
func linkMap(l netmap.BackboneLink) netmap.Map {
	all := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	return netmap.Map{
		Interface:  netmap.Interface{Name: l.Interface, Addresses: []netip.Prefix{l.Address}, MTU: l.MTU, ListenPort: l.ListenPort},
		Peers:      []netmap.Peer{{Name: l.Peer, PublicKey: l.PublicKey, Endpoint: l.Endpoint, AllowedIPs: all, Role: netmap.RoleGateway, Region: l.PeerRegion}},
		Forwarding: true,
	} // not Normalize: it would mask the /31 address to the link's network
}

// syncBackbone makes the backbone links match the map's routing: it
// creates or updates the links named there and deletes the others. The
// links use the node's WireGuard key (each link is its own interface and
// port, so the other end tells them apart by interface).
func (a *Agent) syncBackbone(ctx context.Context, rt *netmap.Routing) error {
	want := map[string]netmap.BackboneLink{}
	if rt != nil {
		for _, l := range rt.Links {
			want[l.Interface] = l
		}
	}
	var errs []error
	if !a.linksSwept {
		// Links left by an earlier run that the map no longer names.
		var names []string
		if ls, err := netlink.LinkList(); err == nil {
			for _, l := range ls {
				names = append(names, l.Attrs().Name)
			}
		}
		for _, name := range staleBackbone(names, rt) {
			if l, err := netlink.LinkByName(name); err == nil {
				netlink.LinkDel(l)
				a.log.Info("stale backbone link removed", "interface", name)
			}
		}
		a.linksSwept = true
	}
	for name, l := range want {
		d, ok := a.links[name]
		if !ok {
			var err error
			d, err = wg.Open(wg.Config{Interface: name, Mode: a.cfg.WireGuard, PrivateKey: a.key,
				UserspaceCommand: a.cfg.UserspaceCommand, LogDir: a.cfg.DataDir, Logger: a.log})
			if err != nil {
				errs = append(errs, fmt.Errorf("backbone link %s: %w", name, err))
				continue
			}
			a.links[name] = d
		}
		m := linkMap(l)
		if _, err := d.Apply(ctx, m, a.linkMaps[name]); err != nil {
			errs = append(errs, fmt.Errorf("backbone link %s to %s: %w", name, l.Peer, err))
			continue
		}
		a.linkMaps[name] = m
		if err := looseReversePath(name); err != nil {
			errs = append(errs, fmt.Errorf("backbone link %s: %w", name, err))
		}
	}
	if err := syncDetourRules(rt); err != nil {
		errs = append(errs, err)
	}
	for name, d := range a.links {
		if _, ok := want[name]; ok {
			continue
		}
		if err := d.Delete(); err != nil {
			errs = append(errs, fmt.Errorf("removing backbone link %s: %w", name, err))
		}
		d.Close()
		delete(a.links, name)
		delete(a.linkMaps, name)
		a.log.Info("backbone link removed", "interface", name)
	}
	return errors.Join(errs...)
}

// staleBackbone lists backbone interfaces left from an earlier run that
// the map no longer names (the agent adopts those it names).
func staleBackbone(existing []string, rt *netmap.Routing) []string {
	keep := map[string]bool{}
	if rt != nil {
		for _, l := range rt.Links {
			keep[l.Interface] = true
		}
	}
	var out []string
	for _, n := range existing {
		if strings.HasPrefix(n, backbonePrefix) && !keep[n] {
			out = append(out, n)
		}
	}
	return out
}

// syncRouting brings the backbone links and BIRD in line with the map.
func (a *Agent) syncRouting(ctx context.Context, m netmap.Map) {
	// A link that cannot be set up does not stop BIRD: its session stays
	// down and the gateway routes over the others (a bounded backbone has
	// other paths; the link is retried with the next map or sync).
	linkErr := a.syncBackbone(ctx, m.Routing)
	err := a.syncBIRD(ctx, m)
	a.mu.Lock()
	a.routingErr, a.linkErr = err, linkErr
	a.mu.Unlock()
	if linkErr != nil {
		a.log.Error("backbone links", "err", linkErr)
	}
	if err != nil {
		a.log.Error("dynamic routing", "err", err)
	}
}

// detourRulePriority is the priority of the rules sending traffic from
// other regions' backbone links to the detour table first.
const detourRulePriority = 1000

// syncDetourRules keeps one rule per link to another region and family:
// traffic arriving on it looks up birdcfg.DetourTable (this region's
// prefixes learned over iBGP) before the main table. IPv6 rules exist
// when the routing carries IPv6 (ip -6 rule; the table number is the
// same, the kernel keeps one table per family).
func syncDetourRules(rt *netmap.Routing) error {
	var errs []error
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		want := map[string]bool{}
		if rt != nil && (family == netlink.FAMILY_V4 || rt.HasIPv6()) {
			for _, l := range rt.Links {
				if l.PeerASN != rt.ASN {
					want[l.Interface] = true
				}
			}
		}
		if err := syncDetourFamily(family, want); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func syncDetourFamily(family int, want map[string]bool) error {
	ip := map[int]string{netlink.FAMILY_V4: "ip", netlink.FAMILY_V6: "ip -6"}[family]
	rules, err := netlink.RuleList(family)
	if err != nil {
		if family == netlink.FAMILY_V6 && len(want) == 0 {
			return nil // no IPv6 on this host, and none asked for
		}
		return fmt.Errorf("listing %s rules: %w", ip, err)
	}
	have := map[string]bool{}
	var errs []error
	for _, r := range rules {
		if r.Table != birdcfg.DetourTable || r.Priority != detourRulePriority {
			continue
		}
		if want[r.IifName] && !have[r.IifName] {
			have[r.IifName] = true
			continue
		}
		if err := netlink.RuleDel(&r); err != nil {
			errs = append(errs, fmt.Errorf("removing %s rule iif %s: %w", ip, r.IifName, err))
		}
	}
	for iface := range want {
		if have[iface] {
			continue
		}
		r := netlink.NewRule()
		r.IifName, r.Table, r.Priority, r.Family = iface, birdcfg.DetourTable, detourRulePriority, family
		// EEXIST: the rule is there though the listing missed it (seen in
		// a loaded 10-region lab); it is what we want.
		if err := netlink.RuleAdd(r); err != nil && !errors.Is(err, syscall.EEXIST) {
			errs = append(errs, fmt.Errorf("%s rule iif %s lookup %d: %w", ip, iface, birdcfg.DetourTable, err))
		}
	}
	return errors.Join(errs...)
}

// looseReversePath sets the link's reverse-path filter to loose (2). With
// a bounded backbone a reply can arrive over another link than the one
// the gateway routes its source through (the request crossed a gateway of
// this region, the reply one of the other: docs/routing.md#the-backbone);
// a host's strict rp_filter (1) would drop it. The kernel applies the
// larger of conf/all and the interface's value, so 2 wins over all=1.
func looseReversePath(ifname string) error {
	path := "/proc/sys/net/ipv4/conf/" + ifname + "/rp_filter"
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "2" {
		return nil
	}
	return os.WriteFile(path, []byte("2"), 0o644)
}
