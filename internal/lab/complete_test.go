package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// labAt is the state of a lab of c: with addressed, as lab up leaves it
// once every step ran (overlay, pod and client addresses); without, as
// it leaves it when it stopped before enrollment.
func labAt(t *testing.T, c Config, addressed bool) *Lab {
	t.Helper()
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	st := newState(c)
	st.Hosts = c.Hosts()
	if !addressed {
		return &Lab{State: st}
	}
	for i, h := range st.Hosts {
		if h.Role == "gateway" {
			continue
		}
		h.Overlay = netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})
		if c.Pods6() {
			h.Overlay6 = netip.MustParseAddr(fmt.Sprintf("fd7a:115c::%x", i+1))
		}
		if c.Pods && c.Pods4() {
			h.PodIP = netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 2})
		}
		if c.Pods && c.Pods6() {
			h.PodIP6 = netip.MustParseAddr(fmt.Sprintf("fd00:10:%x::2", i+1))
		}
	}
	for i := range c.Clients {
		cl := &Client{Name: fmt.Sprintf("laptop%d", i+1), Address: netip.AddrFrom4([4]byte{100, 64, 255, byte(i + 1)})}
		if c.Pods6() {
			cl.Address6 = netip.MustParseAddr(fmt.Sprintf("fd7a:115c:ff::%x", i+1))
		}
		st.Clients = append(st.Clients, cl)
	}
	return &Lab{State: st}
}

// measured is the matrix of l's endpoints with a result for every pair a
// check probes, except those drop returns true for.
func measured(l *Lab, drop func(from, to string) bool) *Matrix {
	eps := l.endpoints()
	m := newMatrix(eps)
	for _, s := range eps {
		for _, d := range eps {
			if probes(s, d) && (drop == nil || !drop(s.Name, d.Name)) {
				m.Results = append(m.Results, ProbeResult{From: s.Name, To: d.Name, ICMP: true, TCP: true, Peer: d.Host.Name})
			}
		}
	}
	return m
}

// TestCheckAfterLabUpStoppedEarly: a lab up that failed before its nodes
// got addresses left a state whose check ran no probes and printed
// "all 0 probes as the policy expects"; it is an error that says why.
func TestCheckAfterLabUpStoppedEarly(t *testing.T) {
	l := labAt(t, Config{Regions: 2, Clusters: 2, Nodes: 2, Gateways: 2, Pods: true, Policy: true, Clients: 1}, false)
	m, err := l.Check(context.Background(), CheckOptions{})
	if !errors.Is(err, ErrIncompleteCheck) {
		t.Fatalf("check of a lab without addresses: err %v, %d probes; want ErrIncompleteCheck", err, len(m.Results))
	}
	for _, want := range []string{"no probes ran", "17 of the lab's 17 endpoints have no address", "eu-central-c1-n1, eu-central-c1-n1/pod", "did `statemesh lab up` finish?"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("no %q in %q", want, err)
		}
	}
}

// TestWantEndpoints: in a lab that came up, the endpoints a check wants
// are the ones it finds, in every shape.
func TestWantEndpoints(t *testing.T) {
	for _, pods := range []string{FamilyIPv4, FamilyIPv6, FamilyDual} {
		for _, clients := range []int{0, 2} {
			t.Run(fmt.Sprintf("%s/clients=%d", pods, clients), func(t *testing.T) {
				l := labAt(t, Config{Regions: 2, Clusters: 1, Nodes: 2, Gateways: 2, Pods: true, Policy: true, PodFamily: pods, Clients: clients}, true)
				var found []string
				for _, e := range l.endpoints() {
					found = append(found, e.Name)
				}
				if d := cmp.Diff(found, wantEndpoints(l.State)); d != "" {
					t.Errorf("found -, want +:\n%s", d)
				}
			})
		}
	}
}

// TestCheckComplete: a check passes only with a result for every pair
// the lab should have probed.
func TestCheckComplete(t *testing.T) {
	full := Config{Regions: 2, Clusters: 1, Nodes: 2, Gateways: 2, Pods: true, Policy: true, PodFamily: FamilyDual, Clients: 1}
	up := func() *Lab { return labAt(t, full, true) }
	for _, tc := range []struct {
		name string
		lab  func() *Lab
		// drop leaves results out of the measured matrix.
		drop func(from, to string) bool
		from []string
		want error  // nil, ErrIncompleteCheck or ErrNothingToProbe
		says string // in the error
	}{
		{name: "all probed", lab: up},
		{name: "from one source", lab: up, from: []string{"client laptop1"},
			drop: func(from, _ string) bool { return from != "client laptop1" }},
		{name: "from a source that is no endpoint", lab: up, from: []string{"laptop1"},
			want: ErrIncompleteCheck, says: "no endpoint is named laptop1"},
		{name: "a node not enrolled", lab: func() *Lab {
			l := up()
			h, _ := l.State.Host("us-east-c1-n2")
			h.Overlay, h.Overlay6 = netip.Addr{}, netip.Addr{}
			return l
		}, want: ErrIncompleteCheck, says: "4 of the lab's 18 endpoints have no address (us-east-c1-n2, us-east-c1-n2/pod, us-east-c1-n2/v6, us-east-c1-n2/pod/v6)"},
		{name: "pods not made", lab: func() *Lab {
			l := up()
			for _, h := range l.State.Hosts {
				h.PodIP, h.PodIP6 = netip.Addr{}, netip.Addr{}
			}
			return l
		}, want: ErrIncompleteCheck, says: "only 32 probes ran: 8 of the lab's 18 endpoints have no address (eu-central-c1-n1/pod, "},
		{name: "client not added", lab: func() *Lab {
			l := up()
			l.State.Clients = nil
			return l
		}, want: ErrIncompleteCheck, says: "1 of the lab's 17 endpoints have no address (client #1)"},
		{name: "a source without results", lab: up, drop: func(from, _ string) bool { return from == "eu-central-c1-n2/pod" },
			want: ErrIncompleteCheck, says: "3 of 64 probes have no result; none from eu-central-c1-n2/pod"},
		{name: "one result missing", lab: up, drop: func(from, to string) bool { return from == "eu-central-c1-n1" && to == "us-east-c1-n2" },
			want: ErrIncompleteCheck, says: "1 of 64 probes have no result (eu-central-c1-n1 → us-east-c1-n2)"},
		{name: "one node, no clients", lab: func() *Lab {
			return labAt(t, Config{Regions: 1, Clusters: 1, Nodes: 1, Gateways: 2, Pods: true}, true)
		}, want: ErrNothingToProbe, says: "no probes ran: no two of the lab's 2 endpoints probe each other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.lab()
			err := measured(l, tc.drop).complete(wantEndpoints(l.State), tc.from)
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("complete: %v", err)
			case tc.want == nil:
			case !errors.Is(err, tc.want):
				t.Fatalf("complete: %v, want %v", err, tc.want)
			case !strings.Contains(err.Error(), tc.says):
				t.Errorf("no %q in %q", tc.says, err)
			}
		})
	}
}
