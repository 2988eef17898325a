package server

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/controller"
)

// TestClients registers external clients through the API (and its
// contract): addresses from the segment's block, the clients gateway gets
// the peer and drops it on removal, and bad requests get specific errors.
func TestClients(t *testing.T) {
	h := start(t, controller.Config{})
	ctx := context.Background()
	if _, err := h.admin.ApplySpec(ctx, mustRead(t, "../../examples/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.AddClient(ctx, api.AddClientRequest{Name: "alice", Region: "eu-central", PublicKey: key(t)}); code(err) != api.CodeUnavailable {
		t.Fatalf("client before any gateway: %v", err)
	}
	gwTok := h.token(api.CreateTokenRequest{Region: "eu-central", Role: "gateway", Uses: 2})
	var watchers = map[string]*watcher{}
	for _, name := range []string{"eu-central-gw1", "eu-central-gw2"} {
		id, err := h.enroll(gwTok, name, "gateway")
		if err != nil {
			t.Fatal(err)
		}
		watchers[name] = watch(t, id)
	}
	alice := key(t)
	cfg, err := h.admin.AddClient(ctx, api.AddClientRequest{Name: "alice", Region: "eu-central", Segment: "ops", PublicKey: alice})
	if err != nil {
		t.Fatal(err)
	}
	block := netip.MustParsePrefix("100.64.16.0/24") // ops: the only clients segment, block 0 of 100.64.16.0/20
	if a := netip.MustParseAddr(cfg.Client.AddressIPv4); !block.Contains(a) || a == block.Addr() {
		t.Errorf("alice got %s, want an address of %s", a, block)
	}
	gw := cfg.PeerName
	if gw != cfg.Client.Gateway || watchers[gw] == nil {
		t.Fatalf("peer %q, gateway %q", gw, cfg.Client.Gateway)
	}
	if !strings.Contains(strings.Join(cfg.AllowedIPs, ","), "100.64.0.0/10") || cfg.PersistentKeepalive == 0 || cfg.PeerPublicKey.IsZero() {
		t.Errorf("config %+v", cfg)
	}
	other := "eu-central-gw1"
	if gw == other {
		other = "eu-central-gw2"
	}
	watchers[gw].waitPeers(t, "client:alice", other)
	// Segment omitted: the policy has one clients segment.
	bob, err := h.admin.AddClient(ctx, api.AddClientRequest{Name: "bob", Region: "eu-central", PublicKey: key(t)})
	if err != nil || bob.Client.Segment != "ops" || bob.Client.AddressIPv4 == cfg.Client.AddressIPv4 {
		t.Fatalf("bob: %+v %v", bob.Client, err)
	}
	for _, tc := range []struct {
		req  api.AddClientRequest
		code string
	}{
		{api.AddClientRequest{Name: "alice", Region: "eu-central", PublicKey: key(t)}, api.CodeAlreadyExists},
		{api.AddClientRequest{Name: "carol", Region: "eu-central", PublicKey: alice}, api.CodeAlreadyExists},
		{api.AddClientRequest{Name: "Carol!", Region: "eu-central", PublicKey: key(t)}, api.CodeInvalidArgument},
		{api.AddClientRequest{Name: "carol", Region: "mars", PublicKey: key(t)}, api.CodeInvalidArgument},
		{api.AddClientRequest{Name: "carol", Region: "eu-central", Segment: "frontend", PublicKey: key(t)}, api.CodeInvalidArgument},
		{api.AddClientRequest{Name: "carol", Region: "eu-central"}, api.CodeInvalidArgument},
	} {
		if _, err := h.admin.AddClient(ctx, tc.req); code(err) != tc.code {
			t.Errorf("%+v: %v, want %s", tc.req, err, tc.code)
		}
	}
	list, err := h.admin.Clients(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %+v %v", list, err)
	}
	again, err := h.admin.ClientConfig(ctx, "alice")
	if err != nil || again.PeerPublicKey != cfg.PeerPublicKey || again.Client.AddressIPv4 != cfg.Client.AddressIPv4 {
		t.Fatalf("config again: %+v %v", again, err)
	}
	if err := h.admin.RemoveClient(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	watchers[gw].waitPeers(t, "client:bob", other)
	if err := h.admin.RemoveClient(ctx, "alice"); code(err) != api.CodeNotFound {
		t.Errorf("second removal: %v", err)
	}
	if _, err := h.admin.ClientConfig(ctx, "alice"); code(err) != api.CodeNotFound {
		t.Errorf("config of a removed client: %v", err)
	}
	for _, op := range []string{"listClients", "addClient", "clientConfig", "removeClient"} {
		if !h.ct.seen[op] {
			t.Errorf("operation %s was not exercised through the contract", op)
		}
	}
}
