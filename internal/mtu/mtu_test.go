package mtu

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCompute(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      Input
		wg, pod int
	}{
		{"ipv4 native", Input{UnderlayMTU: 1500, UnderlayFamily: IPv4}, 1440, 1440},
		{"ipv6 native", Input{UnderlayMTU: 1500, UnderlayFamily: IPv6}, 1420, 1420},
		{"ipv4 vxlan", Input{UnderlayMTU: 1500, Encapsulation: VXLAN}, 1440, 1390},
		{"ipv4 vxlan over ipv6 overlay", Input{UnderlayMTU: 1500, Encapsulation: VXLAN, OverlayFamily: IPv6}, 1440, 1370},
		{"geneve with options", Input{UnderlayMTU: 1500, Encapsulation: Geneve, GeneveOptionBytes: 8}, 1440, 1382},
		// Cilium reserves 95 bytes for its WireGuard (issue 18 item 2: it gave
		// pods 1345 where the plan said 1380).
		{"cilium wireguard", Input{UnderlayMTU: 1500, CiliumWireGuard: true}, 1440, 1345},
		{"jumbo", Input{UnderlayMTU: 9001, UnderlayFamily: IPv4}, 8941, 8941},
		{"gcp", Input{UnderlayMTU: 1460, UnderlayFamily: IPv6, PayloadFamily: Dual}, 1380, 1380},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Compute(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if r.WireGuardMTU != tc.wg || r.PodMTU != tc.pod {
				t.Errorf("wg %d pod %d, want %d %d", r.WireGuardMTU, r.PodMTU, tc.wg, tc.pod)
			}
			// The layers add up.
			sum := 0
			for _, l := range r.Layers {
				sum += l.Overhead
			}
			if r.Input.UnderlayMTU-sum != r.PodMTU {
				t.Errorf("layers sum to %d, underlay %d, pod %d", sum, r.Input.UnderlayMTU, r.PodMTU)
			}
		})
	}
}

func TestLayers(t *testing.T) {
	r, err := Compute(Input{UnderlayMTU: 1500, UnderlayFamily: IPv6, Encapsulation: VXLAN, CiliumWireGuard: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range r.Layers {
		got = append(got, l.Name)
	}
	if diff := cmp.Diff([]string{"underlay", "wireguard", "cilium-vxlan", "cilium-wireguard"}, got); diff != "" {
		t.Error(diff)
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Input
		want error
	}{
		{"ipv6 payload below 1280", Input{UnderlayMTU: 1340, Encapsulation: VXLAN, PayloadFamily: IPv6}, ErrTooSmall},
		{"ipv6 underlay below 1280", Input{UnderlayMTU: 1200, UnderlayFamily: IPv6}, ErrTooSmall},
		{"tiny ipv4", Input{UnderlayMTU: 500}, ErrTooSmall},
		{"huge", Input{UnderlayMTU: 70000}, ErrInvalid}, // not "too small" (issue 18 item 5)
		{"bad family", Input{UnderlayMTU: 1500, UnderlayFamily: "ipx"}, ErrInvalid},
		{"bad encap", Input{UnderlayMTU: 1500, Encapsulation: "gre"}, ErrInvalid},
		{"geneve options on vxlan", Input{UnderlayMTU: 1500, Encapsulation: VXLAN, GeneveOptionBytes: 4}, ErrInvalid},
		{"odd geneve options", Input{UnderlayMTU: 1500, Encapsulation: Geneve, GeneveOptionBytes: 3}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Compute(tc.in); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	// 1340 with IPv4 payload is fine: the limit is the payload's.
	if _, err := Compute(Input{UnderlayMTU: 1340, Encapsulation: VXLAN}); err != nil {
		t.Error(err)
	}
}
