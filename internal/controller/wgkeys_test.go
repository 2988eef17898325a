package controller

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
	"github.com/statemesh/statemesh/internal/topology"
)

// A store written before the WireGuard key index: the controller indexes
// its records' keys once, after the registry loads, and enrollments are
// then checked against them.
func TestOlderStoresGetTheirKeysIndexed(t *testing.T) {
	st, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	old, _ := netmap.GeneratePrivateKey()
	// An older controller's store: a CA, a node, no index and no marker.
	c0, err := New(Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c0.Bootstrap(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Delete(keyWGIndexed); err != nil {
			return err
		}
		return tx.Put(nodeKey("old-1"), encode(NodeRecord{Name: "old-1", Region: "eu-central", Cluster: "prod", Role: "node",
			Class: "weak", State: topology.StateActive, PublicKey: old.PublicKey(), EnrolledAt: time.Now()}))
	}); err != nil {
		t.Fatal(err)
	}

	c, ctx := runSmall(t, Config{Store: st})
	// The migration writes the entries, then (in a transaction of its
	// own) the marker: wait for both.
	deadline := time.Now().Add(5 * time.Second)
	for {
		kv, err := st.Get(ctx, wgKeyKey(old.PublicKey()))
		if err == nil && string(kv.Value) == "node/old-1" {
			if _, err = st.Get(ctx, keyWGIndexed); err == nil {
				break
			}
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) || time.Now().After(deadline) {
			t.Fatalf("old-1's key not indexed, or the store not marked indexed after the migration: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	tok, err := c.CreateToken(ctx, api.CreateTokenRequest{Cluster: "eu-central/prod"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Enroll(ctx, api.EnrollRequest{Token: tok.Secret, Name: "new-1", Role: "node", PublicKey: old.PublicKey(), CSR: csr(t)}, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeAlreadyExists {
		t.Errorf("enrolling with an older record's key: %v, want %s", err, api.CodeAlreadyExists)
	}
}
