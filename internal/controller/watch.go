package controller

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// ErrStreamReplaced ends a stream that a newer stream of the same node
// replaced.
var ErrStreamReplaced = errors.New("a newer watch stream of this node replaced this one")

// ErrNodeGone ends the stream of a node that was removed.
var ErrNodeGone = errors.New("node removed")

// Snapshot returns a node's current map and the revision it reflects.
func (c *Controller) Snapshot(name string) (netmap.Map, int64, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.snapshotLocked(name)
}

func (c *Controller) snapshotLocked(name string) (netmap.Map, int64, error) {
	if c.ix == nil {
		return netmap.Map{}, c.rev, apiErr(api.CodeNoSpec, "no spec has been applied")
	}
	m, ok := c.ix.Map(name)
	if !ok {
		return netmap.Map{}, c.rev, ErrNodeGone
	}
	m.Revision = c.rev
	return m, c.rev, nil
}

func encodeSnapshot(m netmap.Map) []byte {
	b, err := json.Marshal(api.Frame{Type: api.FrameSnapshot, Revision: m.Revision, Map: &m})
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// Sink receives a watch stream's frames. Flush is called when no frame is
// waiting, so transports can batch writes.
type Sink interface {
	Write(frame []byte) error
	Flush() error
}

// Watch streams a node's map: a snapshot (or, when from > 0 and history
// covers it, only the missed deltas), then deltas, and pings every
// pingEvery. It returns when ctx ends, the sink fails, the node is removed,
// or a newer stream of the same node replaces it.
func (c *Controller) Watch(ctx context.Context, name string, from int64, sink Sink, pingEvery time.Duration) error {
	sub, initial, last, err := c.openStream(ctx, name, from)
	if err != nil {
		return err
	}
	defer c.closeStream(sub)
	for _, f := range initial {
		if err := sink.Write(f); err != nil {
			return err
		}
	}
	if err := sink.Flush(); err != nil {
		return err
	}
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ping.C:
			if err := sink.Write(pingFrame(c.Revision())); err != nil {
				return err
			}
			if err := sink.Flush(); err != nil {
				return err
			}
		case <-sub.frames.ready:
			// Write everything queued, then flush once.
			for {
				f, ok, closed := sub.frames.pop()
				if closed {
					return ErrStreamReplaced
				}
				if !ok {
					break
				}
				if err := c.deliver(sub, f, sink, &last); err != nil {
					return err
				}
			}
			if err := sink.Flush(); err != nil {
				return err
			}
			c.lastWrite.Store(time.Now().UnixNano())
		}
	}
}

// LastFrameWritten is when a watch stream last finished writing queued
// frames to its connection (benchmarks: a fan-out's controller side).
func (c *Controller) LastFrameWritten() time.Time {
	return time.Unix(0, c.lastWrite.Load())
}

// openStream subscribes node name's stream and returns the frames it
// starts with: a snapshot or, when from > 0 and history covers it, only
// the missed deltas (a ping when none), and the revision of the snapshot
// sent (frames up to it are skipped).
func (c *Controller) openStream(ctx context.Context, name string, from int64) (sub *subscriber, initial [][]byte, last int64, err error) {
	if c.fenced.Load() {
		return nil, nil, 0, ErrStoreUnreachable
	}
	// The node may have enrolled a moment ago on this or another replica:
	// wait (briefly) for the registry to know it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		n, ok := c.lookupLocked(name)
		if ok {
			frames, covered := []frame(nil), false
			if from > 0 && from <= c.rev {
				var result string
				frames, result, covered = c.resumeLocked(n, from)
				c.metrics.resumes.WithLabelValues(result).Inc()
			}
			if covered {
				for _, f := range frames {
					initial = append(initial, f.data)
				}
				if len(frames) == 0 {
					// Nothing missed: a ping tells the client where it is.
					initial = append(initial, pingFrame(c.rev))
				}
			} else {
				m, _, err := c.snapshotLocked(name)
				if err != nil {
					c.mu.Unlock()
					return nil, nil, 0, err
				}
				initial = append(initial, encodeSnapshot(m))
				last = m.Revision
			}
			sub = c.hub.subscribe(n)
			c.mu.Unlock()
			return sub, initial, last, nil
		}
		ch := c.revWait
		c.mu.Unlock()
		if time.Now().After(deadline) {
			return nil, nil, 0, ErrNodeGone
		}
		select {
		case <-ctx.Done():
			return nil, nil, 0, ctx.Err()
		case <-ch:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// closeStream unsubscribes a stream (a no-op once a newer one replaced it).
func (c *Controller) closeStream(sub *subscriber) {
	c.mu.Lock()
	c.hub.unsubscribe(sub)
	c.mu.Unlock()
}

// deliver writes one frame; a resync frame, or a stream that overflowed,
// gets a fresh snapshot instead.
func (c *Controller) deliver(sub *subscriber, f frame, sink Sink, last *int64) error {
	if sub.overflow.Load() {
		// Skip everything queued: the snapshot supersedes it.
		if sub.frames.clear() {
			return ErrStreamReplaced
		}
		sub.overflow.Store(false)
		f = frame{resync: true}
	}
	if !f.resync {
		if f.rev <= *last {
			return nil // already in the snapshot the client has
		}
		err := sink.Write(f.data)
		if err == nil && !f.at.IsZero() {
			c.metrics.fanout.Observe(time.Since(f.at).Seconds())
		}
		return err
	}
	c.mu.RLock()
	m, _, err := c.snapshotLocked(sub.name)
	c.mu.RUnlock()
	if err != nil {
		return err
	}
	*last = m.Revision
	return sink.Write(encodeSnapshot(m))
}

func pingFrame(rev int64) []byte {
	b, _ := json.Marshal(api.Frame{Type: api.FramePing, Revision: rev})
	return append(b, '\n')
}

// ErrStoreUnreachable ends or refuses streams on a replica that cannot
// reach its store.
var ErrStoreUnreachable = errors.New("this controller cannot reach its store; resume on another replica")
