// Package etcd is the store backend for controller replicas that share an
// etcd cluster. Update is an optimistic transaction: reads happen at one
// snapshot revision, writes are buffered, and the commit compares the mod
// revision of everything read (so a concurrent writer makes it retry), with
// etcd's revision as the store's. Keys live under a prefix.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/statemesh/statemesh/internal/store"
)

// Options configure the backend.
type Options struct {
	Endpoints []string
	// Prefix is prepended to every key (default "/statemesh/").
	Prefix string
	// DialTimeout bounds connecting (default 5s).
	DialTimeout time.Duration
	// Retries bounds how often a conflicting Update is re-run (default 256).
	Retries int
	// PageSize is the List page size (default 10,000).
	PageSize int64
	// RequestTimeout bounds every read and every attempt of an Update
	// (default 5s): a replica cut off from etcd, or an etcd without quorum,
	// fails its calls with store.ErrUnavailable instead of hanging.
	RequestTimeout time.Duration
	// KeepAlive is the gRPC keepalive interval that detects a dead etcd
	// connection under an idle watch (default 5s).
	KeepAlive time.Duration
}

// Store is the etcd backend.
type Store struct {
	cli  *clientv3.Client
	opts Options
}

var _ store.Store = (*Store)(nil)

// Open connects to etcd.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if opts.Prefix == "" {
		opts.Prefix = "/statemesh/"
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.Retries == 0 {
		opts.Retries = 256
	}
	if opts.PageSize == 0 {
		opts.PageSize = 10_000
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = 5 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            opts.Endpoints,
		DialTimeout:          opts.DialTimeout,
		DialKeepAliveTime:    opts.KeepAlive,
		DialKeepAliveTimeout: opts.KeepAlive,
		Logger:               zap.NewNop(),
		Context:              ctx,
		// gRPC's default reconnect backoff grows to minutes (base 1 s,
		// ×1.6): after a partition heals, a replica would wait seconds
		// before it can write again. Reconnect at most every second.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd %v: %w", opts.Endpoints, err)
	}
	s := &Store{cli: cli, opts: opts}
	cctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	if _, err := s.Revision(cctx); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd %v is not answering: %w", opts.Endpoints, err)
	}
	return s, nil
}

func (s *Store) k(key string) string { return s.opts.Prefix + key }

func (s *Store) kv(m *mvccpb.KeyValue) store.KV {
	return store.KV{Key: strings.TrimPrefix(string(m.Key), s.opts.Prefix), Value: m.Value, CreateRev: m.CreateRevision, ModRev: m.ModRevision}
}

// bounded returns ctx limited to one request's timeout.
func (s *Store) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.RequestTimeout)
}

// mapErr turns etcd errors into the store's sentinels. parent is the
// caller's context: when it ended, its own error is returned as is.
func mapErr(parent context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrGRPCCompacted) {
		return store.ErrCompacted
	}
	if errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrGRPCRequestTooLarge) {
		return fmt.Errorf("%w: %v", store.ErrTooLarge, err)
	}
	if errors.Is(err, rpctypes.ErrNoSpace) || errors.Is(err, rpctypes.ErrGRPCNoSpace) {
		return fmt.Errorf("%w: %v", store.ErrNoSpace, err)
	}
	if perr := parent.Err(); perr != nil {
		return perr
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrGRPCNoLeader) ||
		errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrGRPCTimeout) || errors.Is(err, rpctypes.ErrGRPCLeaderChanged) ||
		errors.Is(err, rpctypes.ErrLeaderChanged) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) || errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) ||
		errors.Is(err, rpctypes.ErrGRPCTimeoutDueToLeaderFail) || errors.Is(err, rpctypes.ErrGRPCTimeoutDueToConnectionLost) ||
		errors.Is(err, rpctypes.ErrTooManyRequests) || errors.Is(err, rpctypes.ErrGRPCRequestTooManyRequests) {
		return fmt.Errorf("%w: %v", store.ErrUnavailable, err)
	}
	// Any other error of a member going away (leader election, a killed
	// member) or overloaded ("etcdserver: too many requests": its applied
	// index too far behind its committed one) is the store being
	// unavailable, not a bug.
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
		return fmt.Errorf("%w: %v", store.ErrUnavailable, err)
	}
	return err
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	bctx, cancel := s.bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(bctx, s.k(key))
	if err != nil {
		return store.KV{}, mapErr(ctx, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KV{}, store.ErrNotFound
	}
	return s.kv(resp.Kvs[0]), nil
}

// list pages through a prefix at one revision (rev 0: the current one).
func (s *Store) list(ctx context.Context, prefix string, rev int64) ([]store.KV, int64, error) {
	start := s.k(prefix)
	end := clientv3.GetPrefixRangeEnd(start)
	var out []store.KV
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(s.opts.PageSize), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		bctx, cancel := s.bounded(ctx)
		resp, err := s.cli.Get(bctx, start, opts...)
		cancel()
		if err != nil {
			return nil, 0, mapErr(ctx, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, m := range resp.Kvs {
			out = append(out, s.kv(m))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	return s.list(ctx, prefix, 0)
}

// Revision implements store.Store.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	bctx, cancel := s.bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(bctx, s.k("\x00revision-probe"), clientv3.WithCountOnly())
	if err != nil {
		return 0, mapErr(ctx, err)
	}
	return resp.Header.Revision, nil
}

// tx buffers writes and records what was read.
type tx struct {
	s      *Store
	ctx    context.Context     // bounded by the attempt's timeout
	parent context.Context     // the caller's
	rev    int64               // snapshot revision of the reads
	reads  map[string]int64    // key -> mod revision seen (0: absent)
	got    map[string]store.KV // keys read, as read (reads at one revision: the same every time)
	ranges map[string]bool     // prefixes listed
	writes map[string]*[]byte  // nil value: delete
	order  []string
}

func (t *tx) get(key string) (store.KV, error) {
	// Read before in this attempt (Get, not List): the same answer, without
	// a round trip.
	if kv, ok := t.got[key]; ok {
		kv.Value = slices.Clone(kv.Value)
		return kv, nil
	}
	if mod, ok := t.reads[key]; ok && mod == 0 {
		return store.KV{}, store.ErrNotFound
	}
	opts := []clientv3.OpOption{}
	if t.rev > 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	resp, err := t.s.cli.Get(t.ctx, t.s.k(key), opts...)
	if err != nil {
		return store.KV{}, mapErr(t.parent, err)
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	if len(resp.Kvs) == 0 {
		t.reads[key] = 0
		return store.KV{}, store.ErrNotFound
	}
	kv := t.s.kv(resp.Kvs[0])
	t.reads[key] = kv.ModRev
	if t.got == nil {
		t.got = map[string]store.KV{}
	}
	t.got[key] = kv
	return kv, nil
}

func (t *tx) Get(key string) (store.KV, error) {
	if v, ok := t.writes[key]; ok {
		if v == nil {
			return store.KV{}, store.ErrNotFound
		}
		return store.KV{Key: key, Value: *v}, nil
	}
	return t.get(key)
}

func (t *tx) List(prefix string) ([]store.KV, error) {
	if t.rev == 0 {
		r, err := t.s.Revision(t.ctx)
		if err != nil {
			return nil, err
		}
		t.rev = r
	}
	kvs, _, err := t.s.list(t.ctx, prefix, t.rev)
	if err != nil {
		return nil, err
	}
	t.ranges[prefix] = true
	for _, kv := range kvs {
		if _, ok := t.reads[kv.Key]; !ok {
			t.reads[kv.Key] = kv.ModRev
		}
	}
	// Overlay this transaction's own writes.
	byKey := map[string]store.KV{}
	for _, kv := range kvs {
		byKey[kv.Key] = kv
	}
	for k, v := range t.writes {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		if v == nil {
			delete(byKey, k)
		} else {
			byKey[k] = store.KV{Key: k, Value: *v}
		}
	}
	keys := slices.Sorted(maps.Keys(byKey))
	out := make([]store.KV, len(keys))
	for i, k := range keys {
		out[i] = byKey[k]
	}
	return out, nil
}

func (t *tx) Put(key string, value []byte) error {
	if len(value) > store.MaxValueBytes {
		return fmt.Errorf("%w: %s is %d bytes (limit %d)", store.ErrTooLarge, key, len(value), store.MaxValueBytes)
	}
	if key == "" {
		return errors.New("empty key")
	}
	v := slices.Clone(value)
	if _, ok := t.writes[key]; !ok {
		t.order = append(t.order, key)
	}
	t.writes[key] = &v
	return nil
}

func (t *tx) Delete(key string) error {
	if _, ok := t.writes[key]; !ok {
		t.order = append(t.order, key)
	}
	t.writes[key] = nil
	return nil
}

// maxKeyCompares bounds per-key compares of a listed range (etcd limits a
// transaction to 128 operations by default). Larger ranges are guarded by
// one range compare, which catches keys created or changed after the read
// but not keys deleted meanwhile.
const maxKeyCompares = 64

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) (int64, error) {
	for attempt := 0; attempt < s.opts.Retries; attempt++ {
		rev, done, err := s.attempt(ctx, fn)
		if done || err != nil {
			return rev, err
		}
		// Someone wrote what we read: back off (random, growing, capped)
		// so that contending writers fall out of step, and re-run.
		ceiling := min(50*time.Millisecond, time.Millisecond<<min(attempt, 6))
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Duration(rand.Int64N(int64(ceiling)) + 1)):
		}
	}
	return 0, store.ErrConflict
}

// attempt runs fn once and commits its writes if nothing it read changed
// meanwhile; done=false means a conflict (retry). Its reads and its commit
// are bounded by RequestTimeout together.
func (s *Store) attempt(ctx context.Context, fn func(store.Tx) error) (rev int64, done bool, err error) {
	actx, cancel := s.bounded(ctx)
	defer cancel()
	t := &tx{s: s, ctx: actx, parent: ctx, reads: map[string]int64{}, ranges: map[string]bool{}, writes: map[string]*[]byte{}}
	if err := fn(t); err != nil {
		return 0, true, err
	}
	if len(t.writes) == 0 {
		if t.rev > 0 {
			return t.rev, true, nil
		}
		rev, err := s.Revision(ctx)
		return rev, true, err
	}
	var cmps []clientv3.Cmp
	for prefix := range t.ranges {
		start := s.k(prefix)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(start).WithRange(clientv3.GetPrefixRangeEnd(start)), "<", t.rev+1))
	}
	inRange := func(k string) bool {
		for p := range t.ranges {
			if strings.HasPrefix(k, p) {
				return true
			}
		}
		return false
	}
	keys := slices.Sorted(maps.Keys(t.reads))
	perKey := 0
	for _, k := range keys {
		if inRange(k) {
			perKey++
		}
	}
	for _, k := range keys {
		if inRange(k) && perKey > maxKeyCompares {
			continue
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.k(k)), "=", t.reads[k]))
	}
	var ops []clientv3.Op
	for _, k := range t.order {
		if v := t.writes[k]; v == nil {
			ops = append(ops, clientv3.OpDelete(s.k(k)))
		} else {
			ops = append(ops, clientv3.OpPut(s.k(k), string(*v)))
		}
	}
	resp, err := s.cli.Txn(actx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return 0, true, mapErr(ctx, err)
	}
	return resp.Header.Revision, resp.Succeeded, nil
}

// Watch implements store.Store.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResponse {
	out := make(chan store.WatchResponse)
	go func() {
		defer close(out)
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		defer cancel()
		wch := s.cli.Watch(wctx, s.k(prefix), clientv3.WithPrefix(), clientv3.WithRev(fromRev+1))
		for resp := range wch {
			if resp.CompactRevision != 0 {
				select {
				case out <- store.WatchResponse{Err: store.ErrCompacted}:
				case <-ctx.Done():
				}
				return
			}
			if err := resp.Err(); err != nil {
				select {
				case out <- store.WatchResponse{Err: mapErr(ctx, err)}:
				case <-ctx.Done():
				}
				return
			}
			// Group events by revision (etcd may batch several).
			var cur *store.WatchResponse
			flush := func() bool {
				if cur == nil {
					return true
				}
				select {
				case out <- *cur:
					cur = nil
					return true
				case <-ctx.Done():
					return false
				}
			}
			for _, ev := range resp.Events {
				rev := ev.Kv.ModRevision
				if cur != nil && cur.Revision != rev {
					if !flush() {
						return
					}
				}
				if cur == nil {
					cur = &store.WatchResponse{Revision: rev}
				}
				e := store.Event{Type: store.EventPut, KV: s.kv(ev.Kv)}
				if ev.Type == clientv3.EventTypeDelete {
					e.Type = store.EventDelete
					e.KV.Value = nil
				}
				cur.Events = append(cur.Events, e)
			}
			if !flush() {
				return
			}
		}
		if ctx.Err() == nil {
			select {
			case out <- store.WatchResponse{Err: errors.New("etcd watch closed")}:
			case <-ctx.Done():
			}
		}
	}()
	return out
}

// Close implements store.Store.
func (s *Store) Close() error { return s.cli.Close() }

// Client exposes the etcd client (fault tests use it).
func (s *Store) Client() *clientv3.Client { return s.cli }
