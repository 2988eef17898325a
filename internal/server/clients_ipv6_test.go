package server

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/lab"
)

// TestClientConfigIPv6 (issue 15): in the lab's dual-stack mesh over an
// IPv6 underlay, gateways enroll with [addr]:port endpoints, and a
// client's configuration has an IPv6 address, the mesh's IPv6 ranges in
// its allowed IPs, and its gateway's IPv6 public endpoint written
// [addr]:port, as wg-quick reads it (cli.WGQuick writes it as it is).
func TestClientConfigIPv6(t *testing.T) {
	h := start(t, controller.Config{})
	ctx := context.Background()
	lc := lab.Config{PodFamily: lab.FamilyDual, UnderlayFamily: lab.FamilyIPv6, Policy: true}
	lc.SetDefaults()
	if _, err := h.admin.ApplySpec(ctx, []byte(lc.Spec())); err != nil {
		t.Fatal(err)
	}
	gwTok := h.token(api.CreateTokenRequest{Region: "eu-central", Role: "gateway", Uses: 2})
	for _, host := range lc.Hosts()[:2] {
		ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := apiclient.Enroll(ectx, h.url, gwTok, api.EnrollRequest{Name: host.Name, Role: "gateway", PublicKey: key(t),
			Endpoint: netip.AddrPortFrom(host.Underlay, 51820).String(), PublicEndpoint: netip.AddrPortFrom(host.WAN, 51820).String()})
		cancel()
		if err != nil {
			t.Fatalf("enrolling %s with [%s]:51820: %v", host.Name, host.Underlay, err)
		}
	}
	cfg, err := h.admin.AddClient(ctx, api.AddClientRequest{Name: "laptop1", Region: "eu-central", Segment: "ops", PublicKey: key(t)})
	if err != nil {
		t.Fatal(err)
	}
	ep, err := netip.ParseAddrPort(cfg.PeerEndpoint)
	if err != nil || !ep.Addr().Is6() || !strings.HasPrefix(cfg.PeerEndpoint, "[2001:db8:113::") {
		t.Errorf("peer endpoint %q: want the gateway's IPv6 WAN address as [addr]:port", cfg.PeerEndpoint)
	}
	var has4, has6 bool
	for _, a := range cfg.Addresses {
		p := netip.MustParsePrefix(a)
		has4 = has4 || p.Addr().Is4()
		has6 = has6 || (p.Addr().Is6() && netip.MustParsePrefix(lab.Overlay6Range).Contains(p.Addr()))
	}
	if !has4 || !has6 || cfg.Client.AddressIPv6 == "" {
		t.Errorf("addresses %v (IPv6 %q): want one of each family", cfg.Addresses, cfg.Client.AddressIPv6)
	}
	allowed := strings.Join(cfg.AllowedIPs, ",")
	for _, want := range []string{"100.64.0.0/10", lab.Overlay6Range, lab.Pod6Range, "10.0.0.0/8"} {
		if !strings.Contains(allowed, want) {
			t.Errorf("allowed IPs %v: no %s", cfg.AllowedIPs, want)
		}
	}
}
