// Package store owns the controller's persistent state behind one small
// interface with two backends: bbolt (embedded, the default: one file, no
// other service) and etcd (several controller replicas share it). Both give
// the same guarantees, checked by one conformance suite (storetest):
//
//   - every Update is one serializable, atomic transaction: all its writes
//     share one new revision, or none is written;
//   - revisions increase by one per writing transaction and are never
//     reused; a read-only Update writes nothing and bumps nothing;
//   - Watch(prefix, rev) delivers, in revision order, every event after rev
//     (all events of one revision in one response), or ErrCompacted when
//     history no longer reaches back that far.
//
// Update's fn may run more than once (etcd retries it on conflict), so it
// must only read through its Tx and compute: no other side effects.
package store

import (
	"context"
	"errors"
)

// Sentinel errors.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("key not found")
	// ErrCompacted: the requested revision is older than retained history;
	// re-list and watch from the list's revision.
	ErrCompacted = errors.New("revision compacted")
	// ErrConflict: a transaction kept conflicting with concurrent writers
	// and gave up after its retries.
	ErrConflict = errors.New("transaction conflict: too many concurrent writers")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
	// ErrTooLarge: a value exceeds MaxValueBytes.
	ErrTooLarge = errors.New("value too large")
	// ErrWatcherOverflow: a watcher fell too far behind and was cut off; it
	// must re-list and watch again.
	ErrWatcherOverflow = errors.New("watcher fell behind")
	// ErrNoSpace: the store's disk is full (or over quota); nothing of the
	// failed transaction was written and the store stays usable: writes
	// succeed again once space returns.
	ErrNoSpace = errors.New("store out of disk space")
	// ErrUnavailable: the store did not answer in time (etcd unreachable,
	// no quorum, or this replica partitioned from it). The outcome of a
	// write that failed this way is unknown: it may have been committed.
	ErrUnavailable = errors.New("store unavailable")
)

// MaxValueBytes bounds one value (etcd's default request limit is 1.5 MiB).
const MaxValueBytes = 1 << 20

// KV is a key with its value and revisions.
type KV struct {
	Key       string
	Value     []byte
	CreateRev int64
	ModRev    int64
}

// EventType says what happened to a key.
type EventType int

// Event types.
const (
	EventPut EventType = iota
	EventDelete
)

func (t EventType) String() string {
	if t == EventDelete {
		return "delete"
	}
	return "put"
}

// Event is one change of one key. For a delete, KV.Value is empty.
type Event struct {
	Type EventType
	KV   KV
}

// WatchResponse carries the events of one revision, or an error after
// which the channel is closed.
type WatchResponse struct {
	Revision int64
	Events   []Event
	Err      error
}

// Tx is the view of the store inside Update.
type Tx interface {
	// Get returns a key (seeing this transaction's own writes).
	Get(key string) (KV, error)
	// List returns the keys with a prefix, sorted.
	List(prefix string) ([]KV, error)
	// Put writes a key.
	Put(key string, value []byte) error
	// Delete removes a key; deleting a missing key is not an error.
	Delete(key string) error
}

// Store is a transactional, watchable key-value store.
type Store interface {
	Get(ctx context.Context, key string) (KV, error)
	// List returns the keys with a prefix, sorted, and the revision of
	// that consistent snapshot.
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Update runs fn in a transaction and returns the revision it wrote
	// (or the current revision when fn wrote nothing).
	Update(ctx context.Context, fn func(tx Tx) error) (int64, error)
	// Watch streams events of keys with prefix after revision fromRev.
	// The channel is closed when ctx ends or after an error response.
	Watch(ctx context.Context, prefix string, fromRev int64) <-chan WatchResponse
	// Revision returns the current revision.
	Revision(ctx context.Context) (int64, error)
	Close() error
}
