package controller

import "sync"

// frameQueue is a watch stream's bounded FIFO of frames. It holds only
// what is queued: a channel of QueueLen frames would set aside ~32 KiB per
// stream whether or not anything is ever queued, a third of an idle
// stream's cost. ready wakes the stream's writer.
type frameQueue struct {
	mu     sync.Mutex
	buf    []frame
	head   int
	max    int
	closed bool
	ready  chan struct{} // one token: frames were queued, or the queue closed
	// notify, when set, is called instead of signalling ready (a detached
	// stream, which no goroutine waits for: see Streams).
	notify func()
}

func newFrameQueue(max int) *frameQueue {
	return &frameQueue{max: max, ready: make(chan struct{}, 1)}
}

func (q *frameQueue) signal() {
	q.mu.Lock()
	fn := q.notify
	q.mu.Unlock()
	if fn != nil {
		fn()
		return
	}
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// push queues f; false when the queue is full or closed.
func (q *frameQueue) push(f frame) bool {
	q.mu.Lock()
	if q.closed || len(q.buf)-q.head >= q.max {
		q.mu.Unlock()
		return false
	}
	q.buf = append(q.buf, f)
	q.mu.Unlock()
	q.signal()
	return true
}

// pop takes the oldest frame: ok is false when none is queued, closed
// when the stream was replaced or ended (what is left is not delivered).
func (q *frameQueue) pop() (f frame, ok, closed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return frame{}, false, true
	}
	if q.head == len(q.buf) {
		return frame{}, false, false
	}
	f = q.buf[q.head]
	q.buf[q.head] = frame{} // let the frame's bytes go
	q.head++
	if q.head == len(q.buf) {
		q.reset()
	}
	return f, true, false
}

// reset empties the queue; a large backing array (a burst) is let go.
func (q *frameQueue) reset() {
	q.head = 0
	if cap(q.buf) > 64 {
		q.buf = nil
	} else {
		q.buf = q.buf[:0]
	}
}

// clear drops every queued frame (a snapshot supersedes them); closed
// as for pop.
func (q *frameQueue) clear() (closed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	clear(q.buf)
	q.reset()
	return q.closed
}

// close ends the queue and wakes the writer.
func (q *frameQueue) close() {
	q.mu.Lock()
	q.closed = true
	clear(q.buf)
	q.buf, q.head = nil, 0
	q.mu.Unlock()
	q.signal()
}

// setNotify makes pushes and close call fn rather than signal ready; fn is
// called at once when frames are already queued or the queue is closed.
func (q *frameQueue) setNotify(fn func()) {
	q.mu.Lock()
	q.notify = fn
	pending := q.closed || q.head < len(q.buf)
	q.mu.Unlock()
	if pending {
		fn()
	}
}
