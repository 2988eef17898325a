package controller

import (
	"context"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
)

// WireGuard public keys are unique mesh-wide, across nodes and external
// clients: two peers with one key would make every WireGuard device that
// holds both keep only the last one's allowed IPs, cutting the other off.
// The index wgkeys/<hex of the key> → owner is written in the same
// transaction as the record that uses the key, so two enrollments racing
// with one key conflict in the store and one of them loses.
const prefixWGKey = "wgkeys/"

func wgKeyKey(k netmap.Key) string { return prefixWGKey + hex.EncodeToString(k[:]) }

func nodeOwner(name string) string   { return "node/" + name }
func clientOwner(name string) string { return "client/" + name }

// checkPublicKey refuses keys that are not a real peer's (see
// netmap.CheckPublicKey).
func checkPublicKey(k netmap.Key) error {
	if err := netmap.CheckPublicKey(k); err != nil {
		return apiErr(api.CodeInvalidArgument, "publicKey: %v", err)
	}
	return nil
}

// claimWGKey records owner as the user of key k, refusing a key another
// node or client uses.
func claimWGKey(tx store.Tx, k netmap.Key, owner string) error {
	kv, err := tx.Get(wgKeyKey(k))
	switch {
	case err == nil && string(kv.Value) != owner:
		kind, name, _ := strings.Cut(string(kv.Value), "/")
		return apiErr(api.CodeAlreadyExists, "this WireGuard public key is already used by %s %s: every node and client needs its own key pair", kind, name)
	case err == nil:
		return nil
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	return tx.Put(wgKeyKey(k), []byte(owner))
}

// releaseWGKey deletes the index entry of key k if owner holds it.
func releaseWGKey(tx store.Tx, k netmap.Key, owner string) error {
	kv, err := tx.Get(wgKeyKey(k))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if string(kv.Value) != owner {
		return nil
	}
	return tx.Delete(wgKeyKey(k))
}

// keyWGIndexed marks a store whose every WireGuard key is in the index:
// written at bootstrap of a new store, and by the migration of an older
// one, so a restart does not scan the store for keys to index.
const keyWGIndexed = "meta/wgkeys-indexed"

// missingWGKeys returns the index entries that records from before the
// index lack (a store written by an older controller), from the whole store
// as loaded; none when the store is marked indexed. Duplicates already in
// such a store are reported, not resolved: an admin removes one of the two.
func (c *Controller) missingWGKeys(kvs []store.KV) map[string]string {
	indexed := map[string]string{}
	for _, kv := range kvs {
		if kv.Key == keyWGIndexed {
			return nil
		}
		if strings.HasPrefix(kv.Key, prefixWGKey) {
			indexed[kv.Key] = string(kv.Value)
		}
	}
	missing := map[string]string{}
	for _, kv := range kvs {
		var k netmap.Key
		var owner string
		switch {
		case strings.HasPrefix(kv.Key, prefixNodes):
			n, err := decode[NodeRecord](kv.Value)
			if err != nil {
				continue
			}
			k, owner = n.PublicKey, nodeOwner(n.Name)
		case strings.HasPrefix(kv.Key, prefixClients):
			r, err := decode[ClientRecord](kv.Value)
			if err != nil {
				continue
			}
			k, owner = r.PublicKey, clientOwner(r.Name)
		default:
			continue
		}
		key := wgKeyKey(k)
		cur, ok := indexed[key]
		if !ok {
			cur, ok = missing[key]
		}
		switch {
		case !ok:
			missing[key] = owner
		case cur != owner:
			c.log.Error("two peers share one WireGuard public key; remove one of them", "first", cur, "second", owner, "key", k.String())
		}
	}
	return missing
}

// indexWGKeys writes the missing index entries in batches (etcd bounds a
// transaction's operations: 128 by default), then marks the store indexed.
// It runs once per store, after the registry loaded: until it is done,
// enrollments are checked against the entries written so far.
func (c *Controller) indexWGKeys(ctx context.Context, missing map[string]string) error {
	keys := slices.Sorted(maps.Keys(missing))
	start := time.Now()
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 100)]
		keys = keys[len(batch):]
		if _, err := c.st.Update(ctx, func(tx store.Tx) error {
			for _, key := range batch {
				if err := tx.Put(key, []byte(missing[key])); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if _, err := c.st.Update(ctx, func(tx store.Tx) error { return tx.Put(keyWGIndexed, []byte("1")) }); err != nil {
		return err
	}
	if len(missing) > 0 {
		c.log.Info("indexed the WireGuard keys of records written before the index", "keys", len(missing), "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}
