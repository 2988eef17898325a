// Package storetest is the one conformance suite every store backend must
// pass: CRUD, ordering, atomic and serializable transactions, conflicts
// between concurrent writers (including separate Store instances on one
// backing store, as controller replicas are), watches from a revision,
// compaction, and durability across a restart.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/statemesh/statemesh/internal/store"
)

// Backend opens stores for the suite.
type Backend struct {
	// Open returns a fresh, empty store.
	Open func(t *testing.T) store.Store
	// Second returns another Store instance on the same backing data as s
	// (a second controller replica), or nil when the backend has none.
	Second func(t *testing.T, s store.Store) store.Store
	// Reopen closes s and opens it again on the same data.
	Reopen func(t *testing.T, s store.Store) store.Store
	// Compact makes history before rev unavailable to Watch.
	Compact func(t *testing.T, s store.Store, rev int64)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func put(t *testing.T, s store.Store, kv ...string) int64 {
	t.Helper()
	rev, err := s.Update(ctx(t), func(tx store.Tx) error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := tx.Put(kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func keys(kvs []store.KV) []string {
	out := make([]string, len(kvs))
	for i, kv := range kvs {
		out[i] = kv.Key + "=" + string(kv.Value)
	}
	return out
}

// Run runs the suite.
func Run(t *testing.T, b Backend) {
	t.Run("GetPutDelete", func(t *testing.T) { testCRUD(t, b) })
	t.Run("ListOrderAndPrefix", func(t *testing.T) { testList(t, b) })
	t.Run("TransactionAtomic", func(t *testing.T) { testAtomic(t, b) })
	t.Run("ReadOnlyDoesNotBump", func(t *testing.T) { testReadOnly(t, b) })
	t.Run("ConcurrentCounter", func(t *testing.T) { testCounter(t, b, false) })
	t.Run("ConcurrentAllocation", func(t *testing.T) { testAllocation(t, b, false) })
	if b.Second != nil {
		t.Run("TwoReplicasCounter", func(t *testing.T) { testCounter(t, b, true) })
		t.Run("TwoReplicasAllocation", func(t *testing.T) { testAllocation(t, b, true) })
	}
	t.Run("ListConflict", func(t *testing.T) { testListConflict(t, b) })
	t.Run("WatchFromRevision", func(t *testing.T) { testWatch(t, b) })
	t.Run("WatchCompacted", func(t *testing.T) { testCompacted(t, b) })
	t.Run("RestartDurability", func(t *testing.T) { testDurability(t, b) })
	t.Run("TooLarge", func(t *testing.T) { testTooLarge(t, b) })
}

func testCRUD(t *testing.T, b Backend) {
	s := b.Open(t)
	if _, err := s.Get(ctx(t), "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	r1 := put(t, s, "a", "1")
	kv, err := s.Get(ctx(t), "a")
	if err != nil || string(kv.Value) != "1" || kv.ModRev != r1 || kv.CreateRev != r1 {
		t.Fatalf("get: %+v %v (rev %d)", kv, err, r1)
	}
	r2 := put(t, s, "a", "2")
	if r2 <= r1 {
		t.Fatalf("revision did not increase: %d then %d", r1, r2)
	}
	kv, _ = s.Get(ctx(t), "a")
	if string(kv.Value) != "2" || kv.CreateRev != r1 || kv.ModRev != r2 {
		t.Fatalf("after update: %+v", kv)
	}
	if _, err := s.Update(ctx(t), func(tx store.Tx) error { return tx.Delete("a") }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx(t), "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	// Deleting a missing key is not an error.
	if _, err := s.Update(ctx(t), func(tx store.Tx) error { return tx.Delete("never") }); err != nil {
		t.Fatal(err)
	}
}

func testList(t *testing.T, b Backend) {
	s := b.Open(t)
	put(t, s, "n/b", "2", "n/a", "1", "m/x", "0", "n/c", "3", "nn", "9")
	kvs, rev, err := s.List(ctx(t), "n/")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"n/a=1", "n/b=2", "n/c=3"}, keys(kvs)); diff != "" {
		t.Error(diff)
	}
	if cur, _ := s.Revision(ctx(t)); rev != cur {
		t.Errorf("list revision %d, current %d", rev, cur)
	}
	// A transaction sees its own writes in List.
	_, err = s.Update(ctx(t), func(tx store.Tx) error {
		tx.Put("n/d", []byte("4"))
		tx.Delete("n/a")
		got, err := tx.List("n/")
		if err != nil {
			return err
		}
		if diff := cmp.Diff([]string{"n/b=2", "n/c=3", "n/d=4"}, keys(got)); diff != "" {
			return fmt.Errorf("list in tx: %s", diff)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testAtomic(t *testing.T, b Backend) {
	s := b.Open(t)
	put(t, s, "x", "0")
	before, _ := s.Revision(ctx(t))
	boom := errors.New("boom")
	_, err := s.Update(ctx(t), func(tx store.Tx) error {
		tx.Put("x", []byte("1"))
		tx.Put("y", []byte("1"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("want fn's error, got %v", err)
	}
	if kv, _ := s.Get(ctx(t), "x"); string(kv.Value) != "0" {
		t.Errorf("half-written: x=%s", kv.Value)
	}
	if _, err := s.Get(ctx(t), "y"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("half-written: y exists")
	}
	if after, _ := s.Revision(ctx(t)); after != before {
		t.Errorf("failed transaction moved the revision %d -> %d", before, after)
	}
	// All writes of one transaction share one revision.
	rev := put(t, s, "p", "1", "q", "2")
	p, _ := s.Get(ctx(t), "p")
	q, _ := s.Get(ctx(t), "q")
	if p.ModRev != rev || q.ModRev != rev {
		t.Errorf("one transaction, revisions %d and %d (want %d)", p.ModRev, q.ModRev, rev)
	}
}

func testReadOnly(t *testing.T, b Backend) {
	s := b.Open(t)
	put(t, s, "a", "1")
	before, _ := s.Revision(ctx(t))
	rev, err := s.Update(ctx(t), func(tx store.Tx) error {
		_, err := tx.Get("a")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := s.Revision(ctx(t))
	if rev != before || after != before {
		t.Errorf("read-only transaction: returned %d, revision %d -> %d", rev, before, after)
	}
}

// increment runs read-modify-write on a counter.
func increment(s store.Store, c context.Context, key string) error {
	_, err := s.Update(c, func(tx store.Tx) error {
		n := 0
		if kv, err := tx.Get(key); err == nil {
			n, _ = strconv.Atoi(string(kv.Value))
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return tx.Put(key, []byte(strconv.Itoa(n+1)))
	})
	return err
}

func stores(t *testing.T, b Backend, two bool) []store.Store {
	s := b.Open(t)
	if !two {
		return []store.Store{s}
	}
	return []store.Store{s, b.Second(t, s)}
}

func testCounter(t *testing.T, b Backend, two bool) {
	ss := stores(t, b, two)
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if err := increment(ss[w%len(ss)], ctx(t), "counter"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	kv, err := ss[0].Get(ctx(t), "counter")
	if err != nil || string(kv.Value) != strconv.Itoa(workers*each) {
		t.Fatalf("lost updates: counter=%s (want %d) %v", kv.Value, workers*each, err)
	}
}

// testAllocation allocates unique slots the way the controller does:
// read a candidate key, take it if absent.
func testAllocation(t *testing.T, b Backend, two bool) {
	ss := stores(t, b, two)
	const workers, each = 8, 15
	var mu sync.Mutex
	got := map[int]string{}
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := ss[w%len(ss)]
			for i := range each {
				owner := fmt.Sprintf("w%d-%d", w, i)
				var slot int
				_, err := s.Update(ctx(t), func(tx store.Tx) error {
					for n := 0; ; n++ {
						_, err := tx.Get("slot/" + strconv.Itoa(n))
						if errors.Is(err, store.ErrNotFound) {
							slot = n
							return tx.Put("slot/"+strconv.Itoa(n), []byte(owner))
						}
						if err != nil {
							return err
						}
					}
				})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if prev, dup := got[slot]; dup {
					errs <- fmt.Errorf("slot %d handed to %s and %s", slot, prev, owner)
				}
				got[slot] = owner
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	kvs, _, _ := ss[0].List(ctx(t), "slot/")
	if len(kvs) != workers*each || len(got) != workers*each {
		t.Fatalf("%d slots stored, %d handed out, want %d", len(kvs), len(got), workers*each)
	}
	for _, kv := range kvs {
		n, _ := strconv.Atoi(kv.Key[len("slot/"):])
		if got[n] != string(kv.Value) {
			t.Errorf("slot %d stored for %s, handed to %s", n, kv.Value, got[n])
		}
	}
}

// testListConflict: a transaction that listed a prefix conflicts with a
// concurrent insert into it (phantoms are caught).
func testListConflict(t *testing.T, b Backend) {
	s := b.Open(t)
	put(t, s, "r/a", "1")
	runs := 0
	_, err := s.Update(ctx(t), func(tx store.Tx) error {
		runs++
		kvs, err := tx.List("r/")
		if err != nil {
			return err
		}
		if runs == 1 {
			// Another writer inserts into the range after our read. In a
			// serialized backend (bbolt) this write waits for us instead.
			done := make(chan error, 1)
			go func() { done <- increment(s, context.Background(), "r/b") }()
			select {
			case err := <-done:
				if err != nil {
					return err
				}
			case <-time.After(200 * time.Millisecond):
			}
		}
		return tx.Put("count", []byte(strconv.Itoa(len(kvs))))
	})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for a possibly blocked writer.
	for i := 0; i < 100; i++ {
		if _, err := s.Get(ctx(t), "r/b"); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	count, _ := s.Get(ctx(t), "count")
	kvs, _, _ := s.List(ctx(t), "r/")
	// Serializable: either the count saw r/b (re-run) or r/b was written
	// after the count's transaction.
	cb, _ := s.Get(ctx(t), "r/b")
	if string(count.Value) == "1" && cb.ModRev < count.ModRev {
		t.Fatalf("phantom: count=1 committed at %d after r/b was inserted at %d", count.ModRev, cb.ModRev)
	}
	if len(kvs) != 2 {
		t.Fatalf("r/ has %d keys", len(kvs))
	}
}

func recv(t *testing.T, ch <-chan store.WatchResponse) store.WatchResponse {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no watch response in 10s")
	}
	return store.WatchResponse{}
}

func testWatch(t *testing.T, b Backend) {
	s := b.Open(t)
	r0 := put(t, s, "w/a", "0")
	r1 := put(t, s, "w/a", "1", "w/b", "1")
	put(t, s, "other", "x")
	r3, _ := s.Update(ctx(t), func(tx store.Tx) error { return tx.Delete("w/a") })
	c, cancel := context.WithCancel(ctx(t))
	defer cancel()
	ch := s.Watch(c, "w/", r0)
	// Missed events, in order, one response per revision.
	got := recv(t, ch)
	if got.Err != nil || got.Revision != r1 || len(got.Events) != 2 {
		t.Fatalf("first response %+v, want revision %d with 2 events", got, r1)
	}
	got = recv(t, ch)
	if got.Revision != r3 || len(got.Events) != 1 || got.Events[0].Type != store.EventDelete || got.Events[0].KV.Key != "w/a" {
		t.Fatalf("second response %+v, want delete of w/a at %d", got, r3)
	}
	// Then live events.
	r4 := put(t, s, "w/c", "live")
	got = recv(t, ch)
	if got.Revision != r4 || got.Events[0].KV.Key != "w/c" || string(got.Events[0].KV.Value) != "live" {
		t.Fatalf("live response %+v", got)
	}
}

func testCompacted(t *testing.T, b Backend) {
	if b.Compact == nil {
		t.Skip("backend cannot compact on demand")
	}
	s := b.Open(t)
	first := put(t, s, "c/a", "1")
	for i := range 5 {
		put(t, s, "c/a", strconv.Itoa(i))
	}
	last := put(t, s, "c/a", "end")
	b.Compact(t, s, last)
	ch := s.Watch(ctx(t), "c/", first)
	if r := recv(t, ch); !errors.Is(r.Err, store.ErrCompacted) {
		t.Fatalf("watch from a compacted revision: %+v, want ErrCompacted", r)
	}
}

func testDurability(t *testing.T, b Backend) {
	s := b.Open(t)
	put(t, s, "d/a", "1", "d/b", "2")
	rev := put(t, s, "d/a", "3")
	s = b.Reopen(t, s)
	kvs, r, err := s.List(ctx(t), "d/")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"d/a=3", "d/b=2"}, keys(kvs)); diff != "" || r < rev {
		t.Fatalf("after restart: %v, revision %d (was %d)", diff, r, rev)
	}
	if next := put(t, s, "d/c", "4"); next <= rev {
		t.Fatalf("revision reused after restart: %d <= %d", next, rev)
	}
}

func testTooLarge(t *testing.T, b Backend) {
	s := b.Open(t)
	_, err := s.Update(ctx(t), func(tx store.Tx) error {
		return tx.Put("big", make([]byte, store.MaxValueBytes+1))
	})
	if !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
	if _, err := s.Get(ctx(t), "big"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("oversized value was written")
	}
}
