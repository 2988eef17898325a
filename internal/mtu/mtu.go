// Package mtu owns the MTU arithmetic of the layers StateMesh stacks: the
// underlay, the WireGuard overlay, Cilium's optional encapsulation (VXLAN or
// Geneve) and Cilium's optional own WireGuard encryption. It is pure.
//
// Overheads (ARCHITECTURE §6):
//
//	WireGuard over IPv4 / IPv6   60 / 80 bytes (20/40 IP + 8 UDP + 16 header + 16 tag)
//	VXLAN over IPv4 / IPv6       50 / 70 bytes (14 Ethernet + 20/40 IP + 8 UDP + 8 VXLAN)
//	Geneve over IPv4 / IPv6      50 / 70 bytes + options
//	Cilium native routing        0
//	Cilium's own WireGuard       95 bytes, whatever the family
//
// The last is Cilium's figure, not WireGuard's exact 60/80: Cilium sets the
// pods' route MTU to its MTU value minus its pkg/mtu.WireguardOverhead (95:
// an IPv6 header, UDP, the message header and tag, and the largest padding),
// so the plan uses the same number and Cilium's pods get exactly the
// plan's pod MTU. Geneve options are not in Cilium's arithmetic at all: the
// rendered Cilium MTU value is lowered by them instead (internal/cilium).
package mtu

import (
	"errors"
	"fmt"
	"strings"
)

// Families.
const (
	IPv4 = "ipv4"
	IPv6 = "ipv6"
	Dual = "dual"
)

// Encapsulations Cilium may add inside the overlay.
const (
	Native = "native"
	VXLAN  = "vxlan"
	Geneve = "geneve"
)

// Minimum MTUs a payload family needs.
const (
	MinIPv4 = 576  // the smallest datagram every IPv4 host must accept
	MinIPv6 = 1280 // RFC 8200 §5
)

// Sentinel errors.
var (
	// ErrInvalid is returned for an input that is not an MTU calculation.
	ErrInvalid = errors.New("invalid MTU input")
	// ErrTooSmall is returned when the MTU left for a payload is below what
	// its family needs.
	ErrTooSmall = errors.New("MTU too small")
)

// Input describes one path.
type Input struct {
	// UnderlayMTU is the MTU of the network WireGuard runs over.
	UnderlayMTU int `json:"underlayMTU"`
	// UnderlayFamily is the family of WireGuard's outer packets.
	UnderlayFamily string `json:"underlayFamily"`
	// Encapsulation is Cilium's routing mode: native, vxlan or geneve.
	Encapsulation string `json:"encapsulation"`
	// GeneveOptionBytes is the length of Geneve options.
	GeneveOptionBytes int `json:"geneveOptionBytes,omitempty"`
	// OverlayFamily is the family of the overlay that carries Cilium's
	// encapsulation and its WireGuard (defaults to ipv4).
	OverlayFamily string `json:"overlayFamily"`
	// CiliumWireGuard adds Cilium's own WireGuard encryption.
	CiliumWireGuard bool `json:"ciliumWireGuard"`
	// PayloadFamily is what pods send: ipv4, ipv6 or dual (defaults to ipv4).
	PayloadFamily string `json:"payloadFamily"`
}

// Layer is one layer's contribution.
type Layer struct {
	Name     string `json:"name"`
	Overhead int    `json:"overhead"`
	// MTU is the MTU left above this layer.
	MTU    int    `json:"mtu"`
	Detail string `json:"detail"`
}

// Result is the outcome of a calculation.
type Result struct {
	Input Input `json:"input"`
	// WireGuardMTU is the MTU of the StateMesh WireGuard interface.
	WireGuardMTU int `json:"wireguardMTU"`
	// PodMTU is the MTU pods (and Cilium's MTU setting) must use.
	PodMTU int     `json:"podMTU"`
	Layers []Layer `json:"layers"`
}

// WireGuardOverhead returns WireGuard's per-packet overhead over a family.
func WireGuardOverhead(family string) int {
	if family == IPv6 {
		return 80
	}
	return 60
}

// CiliumWireGuardOverhead is what Cilium subtracts from its MTU for its own
// WireGuard encryption (github.com/cilium/cilium pkg/mtu.WireguardOverhead),
// over either family.
const CiliumWireGuardOverhead = 95

// EncapOverhead returns the overhead of Cilium's encapsulation carried over
// an overlay of the given family.
func EncapOverhead(mode, overlayFamily string, geneveOptions int) int {
	ip := 20
	if overlayFamily == IPv6 {
		ip = 40
	}
	switch mode {
	case VXLAN:
		return 14 + ip + 8 + 8
	case Geneve:
		return 14 + ip + 8 + 8 + geneveOptions
	}
	return 0
}

// MinPayload returns the smallest MTU a payload family can live with.
func MinPayload(family string) int {
	if family == IPv6 || family == Dual {
		return MinIPv6
	}
	return MinIPv4
}

// Compute stacks the layers over the underlay and checks that what is left
// can carry the payload.
func Compute(in Input) (Result, error) {
	if in.UnderlayFamily == "" {
		in.UnderlayFamily = IPv4
	}
	if in.Encapsulation == "" {
		in.Encapsulation = Native
	}
	if in.OverlayFamily == "" {
		in.OverlayFamily = IPv4
	}
	if in.PayloadFamily == "" {
		in.PayloadFamily = IPv4
	}
	if err := check(in); err != nil {
		return Result{}, err
	}
	r := Result{Input: in}
	wg := WireGuardOverhead(in.UnderlayFamily)
	r.WireGuardMTU = in.UnderlayMTU - wg
	r.Layers = append(r.Layers,
		Layer{Name: "underlay", MTU: in.UnderlayMTU, Detail: in.UnderlayFamily + " link"},
		Layer{Name: "wireguard", Overhead: wg, MTU: r.WireGuardMTU, Detail: wgDetail(in.UnderlayFamily)})
	pod := r.WireGuardMTU
	if e := EncapOverhead(in.Encapsulation, in.OverlayFamily, in.GeneveOptionBytes); e > 0 {
		pod -= e
		r.Layers = append(r.Layers, Layer{Name: "cilium-" + in.Encapsulation, Overhead: e, MTU: pod, Detail: encapDetail(in)})
	} else {
		r.Layers = append(r.Layers, Layer{Name: "cilium-native", MTU: pod, Detail: "native routing: no encapsulation"})
	}
	if in.CiliumWireGuard {
		o := CiliumWireGuardOverhead
		pod -= o
		r.Layers = append(r.Layers, Layer{Name: "cilium-wireguard", Overhead: o, MTU: pod,
			Detail: "Cilium's own WireGuard inside the overlay: Cilium reserves 95 (40 IPv6 + 8 UDP + 32 WireGuard + 15 padding) whatever the family"})
	}
	r.PodMTU = pod
	if need := MinPayload(in.PayloadFamily); pod < need {
		// Only the layers that are there can be removed.
		var layers []string
		if in.Encapsulation != Native {
			layers = append(layers, "native routing instead of "+in.Encapsulation)
		}
		if in.CiliumWireGuard {
			layers = append(layers, "no Cilium WireGuard")
		}
		advice := fmt.Sprintf("raise the underlay MTU to %d", in.UnderlayMTU+need-pod)
		if len(layers) > 0 {
			advice += " or remove a layer (" + strings.Join(layers, ", ") + ")"
		}
		return r, fmt.Errorf("%w: %d bytes are left for %s pod traffic, which needs at least %d; %s",
			ErrTooSmall, pod, in.PayloadFamily, need, advice)
	}
	return r, nil
}

func check(in Input) error {
	switch in.UnderlayFamily {
	case IPv4, IPv6:
	default:
		return fmt.Errorf("%w: underlay family %q (use ipv4 or ipv6)", ErrInvalid, in.UnderlayFamily)
	}
	switch in.OverlayFamily {
	case IPv4, IPv6:
	default:
		return fmt.Errorf("%w: overlay family %q (use ipv4 or ipv6)", ErrInvalid, in.OverlayFamily)
	}
	switch in.PayloadFamily {
	case IPv4, IPv6, Dual:
	default:
		return fmt.Errorf("%w: payload family %q (use ipv4, ipv6 or dual)", ErrInvalid, in.PayloadFamily)
	}
	switch in.Encapsulation {
	case Native, VXLAN, Geneve:
	default:
		return fmt.Errorf("%w: encapsulation %q (use native, vxlan or geneve)", ErrInvalid, in.Encapsulation)
	}
	if in.GeneveOptionBytes < 0 || in.GeneveOptionBytes > 252 || in.GeneveOptionBytes%4 != 0 {
		return fmt.Errorf("%w: Geneve options of %d bytes (use a multiple of 4 up to 252)", ErrInvalid, in.GeneveOptionBytes)
	}
	if in.GeneveOptionBytes > 0 && in.Encapsulation != Geneve {
		return fmt.Errorf("%w: Geneve options given with %s encapsulation", ErrInvalid, in.Encapsulation)
	}
	low := MinIPv4
	if in.UnderlayFamily == IPv6 {
		low = MinIPv6
	}
	if in.UnderlayMTU > 65535 {
		return fmt.Errorf("%w: underlay MTU %d is larger than any link's (an IP packet has at most 65535 bytes)", ErrInvalid, in.UnderlayMTU)
	}
	if in.UnderlayMTU < low {
		return fmt.Errorf("%w: underlay MTU %d is not a valid %s link MTU (%d..65535)", ErrTooSmall, in.UnderlayMTU, in.UnderlayFamily, low)
	}
	return nil
}

func wgDetail(family string) string {
	if family == IPv6 {
		return "40 IPv6 + 8 UDP + 16 WireGuard header + 16 auth tag"
	}
	return "20 IPv4 + 8 UDP + 16 WireGuard header + 16 auth tag"
}

func encapDetail(in Input) string {
	ip := "20 IPv4"
	if in.OverlayFamily == IPv6 {
		ip = "40 IPv6"
	}
	d := fmt.Sprintf("14 Ethernet + %s + 8 UDP + 8 %s", ip, in.Encapsulation)
	if in.GeneveOptionBytes > 0 {
		d += fmt.Sprintf(" + %d options", in.GeneveOptionBytes)
	}
	return d
}
