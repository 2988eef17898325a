package controller_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/ctltest"
	"github.com/statemesh/statemesh/internal/netmap"
	etcdstore "github.com/statemesh/statemesh/internal/store/etcd"
	"github.com/statemesh/statemesh/internal/store/etcd/etcdtest"
)

// TestTwoReplicasConcurrentEnrollment: two controller replicas on one etcd
// enroll nodes at the same time; no address is handed out twice, and both
// replicas end up with the same registry.
func TestTwoReplicasConcurrentEnrollment(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	open := func() *etcdstore.Store {
		s, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: cluster.Endpoints(), Prefix: "/replicas/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	spec, err := os.ReadFile("../../examples/small.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := ctltest.Start(t, ctltest.Options{Store: open(), Spec: spec})
	b := ctltest.Start(t, ctltest.Options{Store: open()})
	if b.Admin != nil {
		t.Fatal("the second replica created a second admin credential")
	}
	if a.Controller.CA().Pin() != b.Controller.CA().Pin() {
		t.Fatal("replicas have different CAs")
	}
	const perReplica = 40
	tok := a.Token(t, api.CreateTokenRequest{Cluster: "eu-central/prod", Uses: 2 * perReplica})
	var wg sync.WaitGroup
	var mu sync.Mutex
	addrs := map[string]string{}
	errs := make(chan error, 2*perReplica)
	for r, inst := range []*ctltest.Instance{a, b} {
		for i := range perReplica {
			wg.Add(1)
			go func() {
				defer wg.Done()
				k, _ := netmap.GeneratePrivateKey()
				name := fmt.Sprintf("r%d-n%02d", r, i)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				id, err := apiclient.Enroll(ctx, inst.URL, tok, api.EnrollRequest{Name: name, Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.1:51820"})
				if err != nil {
					errs <- fmt.Errorf("%s via replica %d: %w", name, r, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, addr := range []string{id.Node.OverlayIPv4, id.Node.PodIPv4} {
					if other, dup := addrs[addr]; dup {
						errs <- fmt.Errorf("%s handed to %s and %s", addr, other, name)
					}
					addrs[addr] = name
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	// Both registries converge on all 80 nodes with the same addresses.
	deadline := time.Now().Add(10 * time.Second)
	for {
		na := a.Controller.Nodes("", "")
		nb := b.Controller.Nodes("", "")
		if len(na) == 2*perReplica && len(nb) == 2*perReplica {
			for i := range na {
				if na[i].Name != nb[i].Name || na[i].OverlayIPv4 != nb[i].OverlayIPv4 {
					t.Fatalf("replicas disagree: %+v vs %+v", na[i], nb[i])
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas hold %d and %d nodes, want %d", len(na), len(nb), 2*perReplica)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The token's use count is exact: one more enrollment is refused.
	k, _ := netmap.GeneratePrivateKey()
	_, err = apiclient.Enroll(context.Background(), b.URL, tok, api.EnrollRequest{Name: "extra", Role: "node", PublicKey: k.PublicKey()})
	if ae, ok := err.(*api.Error); !ok || ae.Code != api.CodeTokenUsedUp {
		t.Errorf("81st enrollment on an 80-use token: %v", err)
	}
}
