package spec

import (
	"fmt"
	"strconv"
	"strings"
)

// Protocols of policy rules.
const (
	ProtoTCP  = "tcp"
	ProtoUDP  = "udp"
	ProtoICMP = "icmp"
	ProtoAny  = "any"
)

// Port is one allowed protocol and port range of a policy rule.
type Port struct {
	Proto string `json:"proto"`
	// From..To is the port range (0..0 for icmp and any).
	From int `json:"from,omitempty"`
	To   int `json:"to,omitempty"`
}

func (p Port) String() string {
	switch {
	case p.Proto == ProtoICMP || p.Proto == ProtoAny:
		return p.Proto
	case p.From == p.To:
		return fmt.Sprintf("%s/%d", p.Proto, p.From)
	}
	return fmt.Sprintf("%s/%d-%d", p.Proto, p.From, p.To)
}

// Allows reports whether the entry allows proto/port.
func (p Port) Allows(proto string, port int) bool {
	switch p.Proto {
	case ProtoAny:
		return true
	case ProtoICMP:
		return proto == ProtoICMP
	}
	return p.Proto == proto && port >= p.From && port <= p.To
}

// ParsePort parses "tcp/443", "udp/53-54", "icmp", "any".
func ParsePort(s string) (Port, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == ProtoICMP || s == ProtoAny {
		return Port{Proto: s}, nil
	}
	proto, rng, ok := strings.Cut(s, "/")
	if !ok || (proto != ProtoTCP && proto != ProtoUDP) {
		return Port{}, fmt.Errorf("%q is not a port: write tcp/PORT, udp/PORT, tcp/FROM-TO, icmp or any", s)
	}
	lo, hi, isRange := strings.Cut(rng, "-")
	from, err1 := strconv.Atoi(lo)
	to := from
	var err2 error
	if isRange {
		to, err2 = strconv.Atoi(hi)
	}
	if err1 != nil || err2 != nil || from < 1 || to > 65535 || from > to {
		return Port{}, fmt.Errorf("%q: ports are 1..65535 and FROM ≤ TO", s)
	}
	return Port{Proto: proto, From: from, To: to}, nil
}
