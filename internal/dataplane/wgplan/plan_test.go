package wgplan

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/statemesh/statemesh/internal/netmap"
)

func key(i int) netmap.Key {
	var k netmap.Key
	k[0], k[1], k[2] = byte(i), byte(i>>8), byte(i>>16)
	return k
}

func pfx(s string) netip.Prefix  { return netip.MustParsePrefix(s) }
func ep(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func desiredMap(n int) netmap.Map {
	m := netmap.Map{
		Interface: netmap.Interface{Name: "sm0", Addresses: []netip.Prefix{pfx("100.64.32.1/32")}, MTU: 1440, ListenPort: 51820},
		Routes:    []netip.Prefix{pfx("100.64.0.0/10"), pfx("10.0.0.0/8")},
	}
	for i := range n {
		a := netip.AddrFrom4([4]byte{100, 64, byte(32 + i/250), byte(2 + i%250)})
		m.Peers = append(m.Peers, netmap.Peer{Name: fmt.Sprintf("n%05d", i), PublicKey: key(i + 1),
			Endpoint:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, byte(i / 250), byte(1 + i%250)}), 51820),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(a, 32)}})
	}
	return m
}

// actualOf is the device state after applying m.
func actualOf(m netmap.Map, our netmap.Key) Device {
	d := Device{Exists: true, PublicKey: our, ListenPort: m.Interface.ListenPort, MTU: m.Interface.MTU, Up: true,
		Addresses: m.Interface.Addresses, Routes: m.Routes, Forwarding: m.Forwarding}
	for _, p := range m.Peers {
		d.Peers = append(d.Peers, Peer{PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: p.AllowedIPs, PersistentKeepalive: p.PersistentKeepalive})
	}
	return d
}

var our = key(0xffffff)

func TestEqualIsNoOp(t *testing.T) {
	m := desiredMap(50)
	if ops := Compute(m, m, actualOf(m, our), our); !ops.Empty() {
		t.Fatalf("equal state produced %d ops: %+v", ops.Count(), ops)
	}
}

func TestFreshDevice(t *testing.T) {
	m := desiredMap(3)
	ops := Compute(m, netmap.Map{}, Device{}, our)
	if !ops.SetKey || ops.ListenPort == nil || len(ops.Peers) != 3 || ops.MTU == nil || !ops.Up || len(ops.AddAddrs) != 1 || len(ops.AddRoutes) != 2 {
		t.Fatalf("fresh device ops: %+v", ops)
	}
	for _, p := range ops.Peers {
		if p.Kind != OpAdd || p.Endpoint == nil || !p.ReplaceIPs {
			t.Errorf("peer op %+v", p)
		}
	}
}

func TestOnePeerChangeIsOneOp(t *testing.T) {
	for _, n := range []int{50, 5000} {
		base := desiredMap(n)
		actual := actualOf(base, our)
		// Add one.
		grown := desiredMap(n + 1)
		if ops := Compute(grown, base, actual, our); len(ops.Peers) != 1 || ops.Peers[0].Kind != OpAdd || ops.Count() != 1 {
			t.Errorf("%d peers, add one: %d ops %+v", n, ops.Count(), ops.Peers)
		}
		// Remove one.
		shrunk := base.Clone()
		shrunk.Peers = shrunk.Peers[1:]
		if ops := Compute(shrunk, base, actual, our); len(ops.Peers) != 1 || ops.Peers[0].Kind != OpRemove || ops.Count() != 1 {
			t.Errorf("%d peers, remove one: %d ops", n, ops.Count())
		}
		// Change one's allowed IPs.
		moved := base.Clone()
		moved.Peers[n/2].AllowedIPs = append(moved.Peers[n/2].AllowedIPs, pfx("10.0.0.0/25"))
		ops := Compute(moved, base, actual, our)
		if len(ops.Peers) != 1 || ops.Peers[0].Kind != OpUpdate || !ops.Peers[0].ReplaceIPs || ops.Peers[0].Endpoint != nil {
			t.Errorf("%d peers, change one: %+v", n, ops.Peers)
		}
	}
}

func TestRoamedEndpointIsKept(t *testing.T) {
	m := desiredMap(2)
	actual := actualOf(m, our)
	actual.Peers[0].Endpoint = ep("203.0.113.9:40000") // learned by roaming
	if ops := Compute(m, m, actual, our); len(ops.Peers) != 0 {
		t.Fatalf("unchanged map overwrote a roamed endpoint: %+v", ops.Peers)
	}
	// The controller changing the endpoint does write it.
	moved := m.Clone()
	moved.Peers[0].Endpoint = ep("198.51.100.1:51820")
	ops := Compute(moved, m, actual, our)
	if len(ops.Peers) != 1 || ops.Peers[0].Endpoint == nil || *ops.Peers[0].Endpoint != ep("198.51.100.1:51820") {
		t.Fatalf("changed endpoint not written: %+v", ops.Peers)
	}
	// A peer that lost its endpoint gets the desired one back.
	actual.Peers[1].Endpoint = netip.AddrPort{}
	if ops := Compute(m, m, actual, our); len(ops.Peers) != 1 || ops.Peers[0].Endpoint == nil {
		t.Fatalf("missing endpoint not restored: %+v", ops.Peers)
	}
}

func TestAddressesRoutesForwarding(t *testing.T) {
	m := desiredMap(0)
	m.Forwarding = true
	actual := actualOf(m, our)
	actual.Forwarding = false
	actual.Addresses = []netip.Prefix{pfx("100.64.32.9/32")}
	actual.Routes = []netip.Prefix{pfx("100.64.0.0/10"), pfx("172.16.0.0/12")}
	ops := Compute(m, m, actual, our)
	want := Ops{
		AddAddrs: []netip.Prefix{pfx("100.64.32.1/32")}, DelAddrs: []netip.Prefix{pfx("100.64.32.9/32")},
		AddRoutes: []netip.Prefix{pfx("10.0.0.0/8")}, DelRoutes: []netip.Prefix{pfx("172.16.0.0/12")},
		Forwarding: ptr(true),
	}
	if diff := cmp.Diff(want, ops, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Error(diff)
	}
}

func TestForeignKeyIsRewritten(t *testing.T) {
	m := desiredMap(1)
	actual := actualOf(m, key(7))
	if ops := Compute(m, m, actual, our); !ops.SetKey || ops.Count() != 1 {
		t.Errorf("device with another key: %+v", ops)
	}
}

func ptr[T any](v T) *T { return &v }

func TestFromDeltaMatchesCompute(t *testing.T) {
	base := desiredMap(200)
	for name, mutate := range map[string]func(m netmap.Map) netmap.Map{
		"add": func(m netmap.Map) netmap.Map {
			m.Peers = append(m.Peers, netmap.Peer{Name: "zz", PublicKey: key(99999), AllowedIPs: []netip.Prefix{pfx("100.70.0.1/32")}, Endpoint: ep("192.0.2.9:51820")})
			return m.Normalize()
		},
		"remove": func(m netmap.Map) netmap.Map { m.Peers = m.Peers[1:]; return m },
		"change allowed IPs": func(m netmap.Map) netmap.Map {
			m.Peers[5].AllowedIPs = []netip.Prefix{pfx("100.70.0.0/24")}
			return m
		},
		"change endpoint and keepalive": func(m netmap.Map) netmap.Map {
			m.Peers[7].Endpoint = ep("198.51.100.7:51820")
			m.Peers[7].PersistentKeepalive = 25
			return m
		},
		"rekey": func(m netmap.Map) netmap.Map { m.Peers[9].PublicKey = key(77777); return m },
		"routes and mtu": func(m netmap.Map) netmap.Map {
			m.Routes = []netip.Prefix{pfx("100.64.0.0/10")}
			m.Interface.MTU = 1380
			return m
		},
	} {
		t.Run(name, func(t *testing.T) {
			next := mutate(base.Clone())
			d := netmap.Diff(base, next)
			fromDelta := FromDelta(base, base.Apply(d), d)
			full := Compute(next, base, actualOf(base, our), our)
			if fromDelta.Count() != full.Count() {
				t.Fatalf("delta ops %d (%+v), full diff %d (%+v)", fromDelta.Count(), fromDelta, full.Count(), full)
			}
			// Applying the delta's ops to the device gives the same state
			// the full diff would.
			after := canon(apply(actualOf(base, our), fromDelta))
			if diff := cmp.Diff(canon(actualOf(next, our)), after, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
				cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("device after delta ops differs from the target (-want +got):\n%s", diff)
			}
		})
	}
}

// apply simulates a device executing ops.
func apply(d Device, ops Ops) Device {
	peers := map[netmap.Key]Peer{}
	var order []netmap.Key
	for _, p := range d.Peers {
		peers[p.PublicKey] = p
		order = append(order, p.PublicKey)
	}
	for _, op := range ops.Peers {
		switch op.Kind {
		case OpRemove:
			delete(peers, op.PublicKey)
		default:
			p := peers[op.PublicKey]
			if _, ok := peers[op.PublicKey]; !ok {
				order = append(order, op.PublicKey)
			}
			p.PublicKey = op.PublicKey
			if op.Endpoint != nil {
				p.Endpoint = *op.Endpoint
			}
			if op.ReplaceIPs {
				p.AllowedIPs = op.AllowedIPs
			}
			if op.Keepalive != nil {
				p.PersistentKeepalive = *op.Keepalive
			}
			peers[op.PublicKey] = p
		}
	}
	out := d
	out.Peers = nil
	for _, k := range order {
		if p, ok := peers[k]; ok && !containsKey(out.Peers, k) {
			out.Peers = append(out.Peers, p)
		}
	}
	if ops.MTU != nil {
		out.MTU = *ops.MTU
	}
	out.Routes = netmap.SortPrefixes(append(slicesDelete(out.Routes, ops.DelRoutes), ops.AddRoutes...))
	return out
}

func containsKey(ps []Peer, k netmap.Key) bool {
	for _, p := range ps {
		if p.PublicKey == k {
			return true
		}
	}
	return false
}

func slicesDelete(ps, del []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		keep := true
		for _, d := range del {
			if p == d {
				keep = false
			}
		}
		if keep {
			out = append(out, p)
		}
	}
	return out
}

// canon sorts a device's lists so devices compare as sets.
func canon(d Device) Device {
	d.Peers = slices.Clone(d.Peers)
	slices.SortFunc(d.Peers, func(a, b Peer) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	d.Routes = netmap.SortPrefixes(slices.Clone(d.Routes))
	return d
}
