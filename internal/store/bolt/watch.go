package bolt

import (
	"context"
	"encoding/json"
	"strings"
	"sync"

	bbolt "go.etcd.io/bbolt"

	"github.com/statemesh/statemesh/internal/store"
)

// watcher is one Watch call. Commits push responses into in without ever
// blocking; a watcher whose buffer is full is cut off with
// ErrWatcherOverflow, so one slow reader never delays writers or others.
type watcher struct {
	prefix string
	in     chan store.WatchResponse
	once   sync.Once
	errMu  sync.Mutex
	err    error
	done   chan struct{}
}

func (w *watcher) stop(err error) {
	w.once.Do(func() {
		w.errMu.Lock()
		w.err = err
		w.errMu.Unlock()
		close(w.done)
	})
}

func filter(resp store.WatchResponse, prefix string) (store.WatchResponse, bool) {
	if prefix == "" {
		return resp, true
	}
	out := store.WatchResponse{Revision: resp.Revision}
	for _, e := range resp.Events {
		if strings.HasPrefix(e.KV.Key, prefix) {
			out.Events = append(out.Events, e)
		}
	}
	return out, len(out.Events) > 0
}

// notify is called with writeMu held, in commit order.
func (s *Store) notify(resp store.WatchResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for w := range s.watchers {
		r, ok := filter(resp, w.prefix)
		if !ok {
			continue
		}
		select {
		case w.in <- r:
		default:
			delete(s.watchers, w)
			w.stop(store.ErrWatcherOverflow)
		}
	}
}

// Watch implements store.Store: every event after fromRev, then live ones.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResponse {
	out := make(chan store.WatchResponse)
	w := &watcher{prefix: prefix, in: make(chan store.WatchResponse, s.opts.WatchBuffer), done: make(chan struct{})}
	var backlog []store.WatchResponse
	var startErr error

	// Hold writeMu while reading the backlog and registering, so no commit
	// falls between the two.
	s.writeMu.Lock()
	if err := s.check(); err != nil {
		startErr = err
	} else {
		startErr = s.db.View(func(tx *bbolt.Tx) error {
			if compacted := u64(tx.Bucket(bucketMeta).Get(keyCompact)); fromRev < compacted {
				return store.ErrCompacted
			}
			c := tx.Bucket(bucketLog).Cursor()
			for k, v := c.Seek(be(fromRev + 1)); k != nil; k, v = c.Next() {
				var evs []logEvent
				if err := json.Unmarshal(v, &evs); err != nil {
					return err
				}
				rev := u64(k)
				resp := store.WatchResponse{Revision: rev}
				for _, e := range evs {
					kv := store.KV{Key: e.K, Value: e.V, CreateRev: e.C, ModRev: rev}
					resp.Events = append(resp.Events, store.Event{Type: e.T, KV: kv})
				}
				if r, ok := filter(resp, prefix); ok {
					backlog = append(backlog, r)
				}
			}
			return nil
		})
		if startErr == nil {
			s.mu.Lock()
			s.watchers[w] = struct{}{}
			s.mu.Unlock()
		}
	}
	s.writeMu.Unlock()

	go func() {
		defer close(out)
		defer func() {
			s.mu.Lock()
			delete(s.watchers, w)
			s.mu.Unlock()
		}()
		send := func(r store.WatchResponse) bool {
			select {
			case out <- r:
				return true
			case <-ctx.Done():
				return false
			}
		}
		if startErr != nil {
			send(store.WatchResponse{Err: startErr})
			return
		}
		for _, r := range backlog {
			if !send(r) {
				return
			}
		}
		for {
			select {
			case <-ctx.Done():
				return
			case r := <-w.in:
				if !send(r) {
					return
				}
			case <-w.done:
				// Deliver what was queued before the stop, then the error.
				for {
					select {
					case r := <-w.in:
						if !send(r) {
							return
						}
						continue
					default:
					}
					break
				}
				w.errMu.Lock()
				err := w.err
				w.errMu.Unlock()
				send(store.WatchResponse{Err: err})
				return
			}
		}
	}()
	return out
}
