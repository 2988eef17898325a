package server

import (
	"context"
	"encoding/hex"
	"slices"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
	"github.com/statemesh/statemesh/internal/netmakersync"
	"github.com/statemesh/statemesh/internal/netmap"
)

// TestNetmakerFollowsAttestation runs the controller against a Netmaker
// that checks every call against its swagger.yaml: hosts whose WireGuard
// key a TPM-attested node has are approved, others rejected, a
// quarantined node's host is removed, and a failing Netmaker does not
// hold up the controller.
func TestNetmakerFollowsAttestation(t *testing.T) {
	nm := nmtest.Start(t)
	cl, err := netmaker.NewClient(nm.URL, nm.Token, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cl.Retries, cl.Backoff = 1, 10*time.Millisecond
	a, id, pcr16 := simTPM(t)
	h := start(t, controller.Config{})
	ctx := context.Background()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go netmakersync.New(h.c, netmakersync.Config{Client: cl, Every: 200 * time.Millisecond, Grace: time.Minute, Store: h.st,
		Networks: map[string]netmaker.NetworkSpec{"r": {Name: "nm-r", AddressRange: "10.201.0.0/16"}}}).Run(sctx)
	if _, err := h.admin.ApplySpec(ctx, []byte(attestSpec(attest.EKDigest(id.EKPub), hex.EncodeToString(pcr16)))); err != nil {
		t.Fatal(err)
	}
	enroll := func(cluster, name string, att apiclient.Attester) netmap.Key {
		k, _ := netmap.GeneratePrivateKey()
		if _, err := apiclient.EnrollAttested(ctx, h.url, h.token(api.CreateTokenRequest{Cluster: cluster}), api.EnrollRequest{Name: name, Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"}, att); err != nil {
			t.Fatal(err)
		}
		return k.PublicKey()
	}
	// netclient's key on a TPM host, and on a host without one.
	strong := enroll("r/strict", "host-1", &simAttester{a: a})
	weak := enroll("r/lenient", "host-2", nil)
	now := time.Now()
	nm.Register("host-1", strong.String(), "nm-r", now)
	nm.Register("host-2", weak.String(), "nm-r", now.Add(-time.Hour))
	nm.Register("stranger", "bm90LWEta2V5", "nm-r", now.Add(-time.Hour))
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10 s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait("attested host approved, the others rejected", func() bool {
		return slices.Equal(nm.HostNetworks("host-1"), []string{"nm-r"}) && len(pendingOf(nm)) == 0
	})
	if len(nm.HostNetworks("host-2")) != 0 || len(nm.HostNetworks("stranger")) != 0 {
		t.Error("a host no attested node owns was admitted")
	}
	// The pass that approved them records its report when it ends.
	var st api.Status
	wait("the pass's report in status", func() bool {
		st, err = h.admin.Status(ctx)
		return err == nil && len(st.Backends) == 1 && st.Backends[0].Approved+st.Backends[0].Rejected == 3
	})
	if b := st.Backends[0]; !b.Healthy || b.Approved != 1 || b.Rejected != 2 {
		t.Errorf("backend status: %+v", st.Backends)
	}
	// Quarantine: out of Netmaker at once (the loop is kicked).
	quarantined := time.Now()
	if _, err := h.admin.Quarantine(ctx, "host-1"); err != nil {
		t.Fatal(err)
	}
	wait("quarantined node's host removed", func() bool { return len(nm.HostNetworks("host-1")) == 0 })
	took := time.Since(quarantined)
	t.Logf("quarantine → removed from Netmaker: %s", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("removal took %s", took)
	}
	// Netmaker failing: the controller keeps answering and reports it.
	nm.Fail(100000, 500)
	wait("backend reported failing", func() bool {
		st, err := h.admin.Status(ctx)
		return err == nil && len(st.Backends) == 1 && !st.Backends[0].Healthy
	})
	begin := time.Now()
	if _, err := h.admin.Nodes(ctx, "", ""); err != nil || time.Since(begin) > time.Second {
		t.Errorf("the controller is held up by a failing Netmaker: %v after %s", err, time.Since(begin))
	}
	nm.Fail(0, 0)
	wait("backend healthy again", func() bool {
		st, err := h.admin.Status(ctx)
		return err == nil && len(st.Backends) == 1 && st.Backends[0].Healthy
	})
	if len(nm.Violations) != 0 {
		t.Errorf("contract violations: %v", nm.Violations)
	}
}

func pendingOf(nm *nmtest.Server) []string {
	var out []string
	for id := range nm.PendingIDs() {
		out = append(out, id)
	}
	return out
}
