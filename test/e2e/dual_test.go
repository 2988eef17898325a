package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/lab"
)

// TestLabDual runs the lab of examples/lab/dual.yaml (dual-stack pods
// over an IPv4 underlay, baseline mode) with one node per cluster, the
// lab's policy and an operator client (issue 15): the matrix holds both
// families for nodes, pods and the client and equals the policy in each;
// killing a designated gateway moves IPv6 pod traffic across regions as
// it moves IPv4 traffic.
func TestLabDual(t *testing.T) {
	data, err := os.ReadFile("../../examples/lab/dual.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := lab.Config{GatewayTimeout: 1500 * time.Millisecond, Policy: true, Clients: 1}
	if err := lab.ParseConfig(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Nodes = 1 // CI time: one node per cluster is enough for the families
	l := upLabWith(t, cfg)
	ctx := context.Background()

	t.Run("MeasuredMatrixEqualsPolicyInBothFamilies", func(t *testing.T) {
		m := check(t, l)
		count := probeCounts(m)
		t.Logf("probes by family, kind and verdict: %v", count)
		for _, fam := range []string{"IPv4", "IPv6"} {
			for _, kind := range []string{"node", "pod", "client"} {
				for _, verdict := range []string{"allowed", "denied"} {
					if k := fam + " " + kind + " " + verdict; count[k] == 0 {
						t.Errorf("no %s probe: the matrix would not prove it", k)
					}
				}
			}
		}
	})

	t.Run("GatewayFailoverIPv6", func(t *testing.T) {
		src, dst := host(t, l, "eu-central-c1-n1"), host(t, l, "us-east-c1-n1")
		regions, err := l.Admin.Regions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		victim := regions[0].Designation["c1"]
		fwd, err := l.Stream(ctx, src.Name, true, dst.PodIP6, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer fwd.Stop()
		back, err := l.Stream(ctx, dst.Name, true, src.PodIP6, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer back.Stop()
		if !fwd.WaitOK(time.Time{}, 10, 15*time.Second) || !back.WaitOK(time.Time{}, 10, 15*time.Second) {
			t.Fatal("cross-region IPv6 pod traffic not flowing before the failure")
		}
		killed := time.Now()
		if err := l.KillHost(victim); err != nil {
			t.Fatal(err)
		}
		if !fwd.WaitOK(killed, 25, 30*time.Second) || !back.WaitOK(killed, 25, 30*time.Second) {
			t.Fatalf("IPv6 traffic did not recover within 30s after killing %s", victim)
		}
		of, nf := fwd.Outage(killed)
		ob, nb := back.Outage(killed)
		t.Logf("killed designated gateway %s: IPv6 outage %s → %s: %s (%d failed probes), back: %s (%d failed probes)",
			victim, src.Name, dst.Name, of.Round(time.Millisecond), nf, ob.Round(time.Millisecond), nb)
		if of > 10*time.Second || ob > 10*time.Second {
			t.Errorf("outage above the baseline's few seconds: %s / %s", of, ob)
		}
		if err := l.StartAgent(victim); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "gateway back healthy", 30*time.Second, func() bool {
			n, err := l.Admin.Node(ctx, victim)
			return err == nil && n.Healthy != nil && *n.Healthy
		})
		check(t, l)
	})
}
