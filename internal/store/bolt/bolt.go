// Package bolt is the embedded store backend: one bbolt file, a revision
// counter, and a bounded changelog that serves watches from a revision.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/statemesh/statemesh/internal/store"
)

var (
	bucketKV   = []byte("kv")
	bucketMeta = []byte("meta")
	bucketLog  = []byte("log")
	keyRev     = []byte("revision")
	keyCompact = []byte("compacted")
)

// Options tune the backend.
type Options struct {
	// Retention is how many revisions of history the changelog keeps for
	// watches (default 100,000).
	Retention int64
	// WatchBuffer is how many revisions a watcher may lag before it is cut
	// off with ErrWatcherOverflow (default 4,096).
	WatchBuffer int
	// NoSync skips fsync on commit (benchmarks only: not durable).
	NoSync bool
}

// Store is the bbolt backend.
type Store struct {
	db   *bbolt.DB
	opts Options

	writeMu  sync.Mutex // orders commits and their notifications
	mu       sync.Mutex // guards watchers and closed
	watchers map[*watcher]struct{}
	closed   bool
}

var _ store.Store = (*Store)(nil)

// FileName is the database file under the data directory.
const FileName = "statemesh.db"

// Open opens (or creates) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Retention <= 0 {
		opts.Retention = 100_000
	}
	if opts.WatchBuffer <= 0 {
		opts.WatchBuffer = 4096
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 2 * time.Second, NoSync: opts.NoSync, NoFreelistSync: true})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("opening %s: the file is locked by another process (is another controller running on this data dir?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketKV, bucketMeta, bucketLog} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("initializing %s: %w", path, err)
	}
	return &Store{db: db, opts: opts, watchers: map[*watcher]struct{}{}}, nil
}

func u64(b []byte) int64 {
	if len(b) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(b))
}

func be(n int64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(n))
	return b
}

// record layout in the kv bucket: createRev(8) modRev(8) value.
func decodeKV(k, v []byte) store.KV {
	if len(v) < 16 {
		return store.KV{Key: string(k)}
	}
	return store.KV{Key: string(k), CreateRev: u64(v[:8]), ModRev: u64(v[8:16]), Value: bytes.Clone(v[16:])}
}

func (s *Store) check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return store.ErrClosed
	}
	return nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := s.check(); err != nil {
		return store.KV{}, err
	}
	var kv store.KV
	err := s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketKV).Get([]byte(key))
		if v == nil {
			return store.ErrNotFound
		}
		kv = decodeKV([]byte(key), v)
		return nil
	})
	return kv, err
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	if err := s.check(); err != nil {
		return nil, 0, err
	}
	var out []store.KV
	var rev int64
	err := s.db.View(func(tx *bbolt.Tx) error {
		rev = u64(tx.Bucket(bucketMeta).Get(keyRev))
		out = list(tx.Bucket(bucketKV), prefix)
		return nil
	})
	return out, rev, err
}

func list(b *bbolt.Bucket, prefix string) []store.KV {
	// A controller's start lists millions of keys: in blocks rather than
	// one slice regrown and copied, and with the values copied into shared
	// arenas rather than one allocation each. A value's capacity ends where
	// it does, so appending to one never writes into the next.
	const block, arena = 16 << 10, 256 << 10
	var blocks [][]store.KV
	var cur []store.KV
	var buf []byte
	total := 0
	c := b.Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if len(cur) == cap(cur) {
			if cur != nil {
				blocks = append(blocks, cur)
			}
			cur = make([]store.KV, 0, block)
		}
		kv := store.KV{Key: string(k)}
		if len(v) >= 16 {
			kv.CreateRev, kv.ModRev = u64(v[:8]), u64(v[8:16])
			val := v[16:]
			if len(val) == 0 || len(val) > arena/8 {
				kv.Value = bytes.Clone(val)
			} else {
				if len(buf)+len(val) > cap(buf) {
					buf = make([]byte, 0, arena)
				}
				start := len(buf)
				buf = append(buf, val...)
				kv.Value = buf[start:len(buf):len(buf)]
			}
		}
		cur = append(cur, kv)
		total++
	}
	if len(blocks) == 0 {
		return cur
	}
	out := make([]store.KV, 0, total)
	for _, bl := range blocks {
		out = append(out, bl...)
	}
	return append(out, cur...)
}

// Revision implements store.Store.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	var rev int64
	err := s.db.View(func(tx *bbolt.Tx) error {
		rev = u64(tx.Bucket(bucketMeta).Get(keyRev))
		return nil
	})
	return rev, err
}

type tx struct {
	kv     *bbolt.Bucket
	rev    int64
	events []store.Event
}

func (t *tx) Get(key string) (store.KV, error) {
	v := t.kv.Get([]byte(key))
	if v == nil {
		return store.KV{}, store.ErrNotFound
	}
	return decodeKV([]byte(key), v), nil
}

func (t *tx) List(prefix string) ([]store.KV, error) { return list(t.kv, prefix), nil }

func (t *tx) Put(key string, value []byte) error {
	if len(value) > store.MaxValueBytes {
		return fmt.Errorf("%w: %s is %d bytes (limit %d)", store.ErrTooLarge, key, len(value), store.MaxValueBytes)
	}
	if key == "" {
		return errors.New("empty key")
	}
	create := t.rev
	if old := t.kv.Get([]byte(key)); len(old) >= 16 {
		create = u64(old[:8])
	}
	rec := make([]byte, 16+len(value))
	copy(rec, be(create))
	copy(rec[8:], be(t.rev))
	copy(rec[16:], value)
	if err := t.kv.Put([]byte(key), rec); err != nil {
		return err
	}
	t.events = append(t.events, store.Event{Type: store.EventPut, KV: store.KV{Key: key, Value: bytes.Clone(value), CreateRev: create, ModRev: t.rev}})
	return nil
}

func (t *tx) Delete(key string) error {
	if t.kv.Get([]byte(key)) == nil {
		return nil
	}
	if err := t.kv.Delete([]byte(key)); err != nil {
		return err
	}
	t.events = append(t.events, store.Event{Type: store.EventDelete, KV: store.KV{Key: key, ModRev: t.rev}})
	return nil
}

// logEvent is an event as the changelog stores it.
type logEvent struct {
	T store.EventType `json:"t"`
	K string          `json:"k"`
	V []byte          `json:"v,omitempty"`
	C int64           `json:"c,omitempty"`
}

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	var t *tx
	var rev int64
	err := s.db.Update(func(btx *bbolt.Tx) error {
		meta := btx.Bucket(bucketMeta)
		cur := u64(meta.Get(keyRev))
		t = &tx{kv: btx.Bucket(bucketKV), rev: cur + 1}
		if err := fn(t); err != nil {
			return err
		}
		if len(t.events) == 0 {
			rev = cur
			return nil
		}
		rev = t.rev
		if err := meta.Put(keyRev, be(rev)); err != nil {
			return err
		}
		evs := make([]logEvent, len(t.events))
		for i, e := range t.events {
			evs[i] = logEvent{T: e.Type, K: e.KV.Key, V: e.KV.Value, C: e.KV.CreateRev}
		}
		b, err := json.Marshal(evs)
		if err != nil {
			return err
		}
		lg := btx.Bucket(bucketLog)
		if err := lg.Put(be(rev), b); err != nil {
			return err
		}
		return s.compact(meta, lg, rev)
	})
	if err != nil {
		return 0, noSpace(err)
	}
	if t != nil && len(t.events) > 0 {
		s.notify(store.WatchResponse{Revision: rev, Events: t.events})
	}
	return rev, nil
}

// noSpace marks a commit that failed for lack of disk space with
// store.ErrNoSpace. bbolt rolls such a commit back (its meta page is written
// last, so the file still holds the previous transaction), and some of its
// errors carry the cause only as text ("file resize error: ...").
func noSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG) ||
		strings.Contains(err.Error(), syscall.ENOSPC.Error()) || strings.Contains(err.Error(), syscall.EDQUOT.Error()) {
		return fmt.Errorf("%w: %w", store.ErrNoSpace, err)
	}
	return err
}

// compact drops changelog entries older than the retention.
func (s *Store) compact(meta, lg *bbolt.Bucket, rev int64) error {
	limit := rev - s.opts.Retention
	if limit <= u64(meta.Get(keyCompact)) {
		return nil
	}
	c := lg.Cursor()
	for k, _ := c.First(); k != nil && u64(k) <= limit; k, _ = c.Next() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return meta.Put(keyCompact, be(limit))
}

// Close implements store.Store.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ws := s.watchers
	s.watchers = map[*watcher]struct{}{}
	s.mu.Unlock()
	for w := range ws {
		w.stop(store.ErrClosed)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.db.Close()
}

// Path returns the database file.
func (s *Store) Path() string { return s.db.Path() }

// compactTo drops history up to rev (tests).
func (s *Store) compactTo(btx *bbolt.Tx, rev int64) error {
	meta, lg := btx.Bucket(bucketMeta), btx.Bucket(bucketLog)
	c := lg.Cursor()
	for k, _ := c.First(); k != nil && u64(k) <= rev; k, _ = c.Next() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return meta.Put(keyCompact, be(rev))
}
