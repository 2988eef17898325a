package etcd

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/etcd/etcdtest"
	"github.com/statemesh/statemesh/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	n := 0
	prefixes := map[store.Store]string{}
	open := func(t *testing.T, prefix string) store.Store {
		s, err := Open(context.Background(), Options{Endpoints: cluster.Endpoints(), Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		prefixes[s] = prefix
		return s
	}
	storetest.Run(t, storetest.Backend{
		Open: func(t *testing.T) store.Store {
			n++
			return open(t, fmt.Sprintf("/test-%d-%d/", time.Now().UnixNano(), n))
		},
		Second: func(t *testing.T, s store.Store) store.Store { return open(t, prefixes[s]) },
		Reopen: func(t *testing.T, s store.Store) store.Store {
			p := prefixes[s]
			s.Close()
			return open(t, p)
		},
		Compact: func(t *testing.T, s store.Store, rev int64) {
			if _, err := s.(*Store).Client().Compact(context.Background(), rev); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// TestRestartServer: data survives an etcd crash and restart.
func TestServerRestartDurability(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	s, err := Open(context.Background(), Options{Endpoints: cluster.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rev, err := s.Update(context.Background(), func(tx store.Tx) error { return tx.Put("k", []byte("v")) })
	if err != nil {
		t.Fatal(err)
	}
	cluster.Members[0].Kill()
	cluster.Members[0].Restart(t)
	cluster.WaitHealthy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var kv store.KV
	for {
		kv, err = s.Get(ctx, "k")
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || string(kv.Value) != "v" || kv.ModRev != rev {
		t.Fatalf("after etcd restart: %+v %v", kv, err)
	}
}
