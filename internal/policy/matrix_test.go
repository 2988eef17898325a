package policy

import (
	"testing"

	"github.com/statemesh/statemesh/internal/spec"
)

// TestMatrixAgreesWithAllowed checks every cell of the segment matrix
// against Allowed for strong and weak endpoints that each belong to exactly
// one segment: the printed matrix is the enforced one.
func TestMatrixAgreesWithAllowed(t *testing.T) {
	p := compile(t, `policy:
  segments:
    - {name: web, match: {labels: {app: web}}}
    - {name: api, match: {labels: {app: api}}, isolated: true}
    - {name: vault, match: {labels: {app: vault}}, sensitive: true}
    - {name: ops, clients: true}
  rules:
    - {name: web-api, from: web, to: api, ports: ["tcp/7000", icmp, "tcp/7000-7001"]}
    - {name: api-vault, from: api, to: vault, ports: ["tcp/8200"]}
    - {name: web-vault, from: web, to: vault, ports: [any]}
    - {name: ops-web, from: ops, to: web, ports: [any]}
`)
	member := func(seg, class string) Endpoint {
		if seg == "ops" {
			return Endpoint{Name: "laptop", Client: true, Segment: "ops"}
		}
		return Endpoint{Name: seg + "-" + class, Region: "eu", Cluster: "a", Role: "node", Class: class, Labels: map[string]string{"app": seg}}
	}
	probes := []struct {
		proto string
		port  int
	}{{spec.ProtoTCP, 7000}, {spec.ProtoTCP, 7001}, {spec.ProtoTCP, 8200}, {spec.ProtoUDP, 53}, {spec.ProtoICMP, 0}}
	cells := p.Matrix()
	if len(cells) != 16 {
		t.Fatalf("got %d cells, want 4×4", len(cells))
	}
	for _, c := range cells {
		for _, class := range []string{"strong", "weak"} {
			src, dst := member(c.From, class), member(c.To, "strong")
			for _, pr := range probes {
				want, why := p.Allowed(src, dst, pr.proto, pr.port)
				got := c.All
				for _, ps := range c.Ports {
					pt, err := spec.ParsePort(ps)
					if err != nil {
						t.Fatal(err)
					}
					got = got || pt.Allows(pr.proto, pr.port)
				}
				if c.StrongOnly && class == "weak" && !src.Client {
					got = false
				}
				if got != want {
					t.Errorf("%s (%s) -> %s %s/%d: matrix cell %q says %v, Allowed says %v (%s)", c.From, class, c.To, pr.proto, pr.port, c, got, want, why)
				}
			}
		}
	}
	byPair := map[[2]string]Cell{}
	for _, c := range cells {
		byPair[[2]string{c.From, c.To}] = c
	}
	for pair, want := range map[[2]string]string{
		{"web", "web"}: "all", {"api", "api"}: "-", {"web", "api"}: "icmp,tcp/7000,tcp/7000-7001",
		{"web", "vault"}: "all*", {"api", "vault"}: "tcp/8200*", {"vault", "web"}: "-", {"ops", "web"}: "all",
	} {
		if got := byPair[pair].String(); got != want {
			t.Errorf("%s -> %s: %q, want %q", pair[0], pair[1], got, want)
		}
	}
}
