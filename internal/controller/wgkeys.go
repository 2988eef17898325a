package controller

import (
	"context"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"strings"

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

// indexWGKeys writes the index entries that records from before the index
// lack (a store written by an older controller). kvs is the whole store as
// loaded. Duplicates already in such a store are reported, not resolved:
// an admin removes one of the two.
func (c *Controller) indexWGKeys(ctx context.Context, kvs []store.KV) error {
	indexed := map[string]string{}
	for _, kv := range kvs {
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
	if len(missing) == 0 {
		return nil
	}
	// In batches: etcd bounds a transaction's operations (128 by default).
	keys := slices.Sorted(maps.Keys(missing))
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 50)]
		keys = keys[len(batch):]
		_, err := c.st.Update(ctx, func(tx store.Tx) error {
			for _, key := range batch {
				if _, err := tx.Get(key); err == nil {
					continue // another replica indexed it meanwhile
				} else if !errors.Is(err, store.ErrNotFound) {
					return err
				}
				if err := tx.Put(key, []byte(missing[key])); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	c.log.Info("indexed WireGuard keys of records written before the index", "keys", len(missing))
	return nil
}
