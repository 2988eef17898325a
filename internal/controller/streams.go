package controller

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// StreamConn is the connection a detached watch stream writes to (the
// server hands over a hijacked TLS connection).
type StreamConn interface {
	Write(b []byte) (int, error)
	// Read is called with a deadline already passed, to notice a client
	// that closed its end (io.EOF) without a goroutine blocked reading.
	Read(b []byte) (int, error)
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
	Close() error
}

// StreamsConfig configures Streams.
type StreamsConfig struct {
	// PingEvery is the keepalive interval of every stream.
	PingEvery time.Duration
	// WriteTimeout bounds one write to a stream; a client that stops
	// reading is disconnected when it passes.
	WriteTimeout time.Duration
}

// Streams serves detached watch streams: a stream that has been opened
// has no goroutine of its own while it waits. When frames arrive its queue
// starts a goroutine that writes everything queued in one write (from a
// pooled buffer) and ends; a ticker schedules pings and, at each, notices
// clients that closed their end. A stream then costs its connection, its
// subscriber and its queue: no goroutine stacks and no per-connection HTTP
// buffers. (A fixed pool of writers would cost less to start, but a few
// clients that stop reading would hold every writer for the write timeout
// and stall everyone's fan-out.)
type Streams struct {
	c   *Controller
	cfg StreamsConfig

	mu     sync.Mutex
	all    map[*stream]struct{}
	next   int // bucket of the next stream
	closed bool
	wg     sync.WaitGroup
	stop   chan struct{}
}

// pingBuckets spreads pings over the interval: every PingEvery/pingBuckets
// one bucket of streams is pinged.
const pingBuckets = 16

type stream struct {
	sub    *subscriber
	conn   StreamConn
	last   int64 // revision of the last snapshot sent
	bucket int
	// state: 0 idle, 1 being written, 2 the same and more work arrived
	// meanwhile (written again before going idle).
	state   atomic.Int32
	pingDue atomic.Bool
	checkUp atomic.Bool // at the ping: has the client closed its end?
	ended   atomic.Bool
}

// NewStreams starts the pinger of detached streams; Close stops it and
// ends every stream.
func (c *Controller) NewStreams(cfg StreamsConfig) *Streams {
	if cfg.PingEvery <= 0 {
		cfg.PingEvery = 15 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 60 * time.Second
	}
	s := &Streams{c: c, cfg: cfg, all: map[*stream]struct{}{}, stop: make(chan struct{})}
	s.wg.Add(1)
	go s.pinger()
	return s
}

// Open starts node name's stream from revision from (as Watch) on the
// connection attach returns, after writing prefix (the response header)
// and the stream's first frames. It returns once the stream is running;
// errors before attach is called leave the connection to the caller.
func (s *Streams) Open(ctx context.Context, name string, from int64, attach func() (StreamConn, []byte, error)) error {
	sub, initial, last, err := s.c.openStream(ctx, name, from)
	if err != nil {
		return err
	}
	conn, prefix, err := attach()
	if err != nil {
		s.c.closeStream(sub)
		return err
	}
	b := prefix
	for _, f := range initial {
		b = append(b, f...)
	}
	conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if _, err := conn.Write(b); err != nil {
		s.c.closeStream(sub)
		conn.Close()
		return err
	}
	st := &stream{sub: sub, conn: conn, last: last}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.c.closeStream(sub)
		conn.Close()
		return errors.New("server stopping")
	}
	st.bucket = s.next % pingBuckets
	s.next++
	s.all[st] = struct{}{}
	s.mu.Unlock()
	sub.frames.setNotify(func() { s.schedule(st) })
	return nil
}

// Len is the number of detached streams.
func (s *Streams) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.all)
}

// schedule starts a writer for st unless one is running.
func (s *Streams) schedule(st *stream) {
	for {
		switch v := st.state.Load(); v {
		case 0:
			if st.state.CompareAndSwap(0, 1) {
				go s.writer(st)
				return
			}
		case 1:
			if st.state.CompareAndSwap(1, 2) {
				return
			}
		default:
			return
		}
	}
}

var writeBufs = sync.Pool{New: func() any { return new([]byte) }}

// writer writes st's queue until it is empty and no more work arrived.
func (s *Streams) writer(st *stream) {
	bp := writeBufs.Get().(*[]byte)
	for {
		*bp = s.write(st, (*bp)[:0])
		if st.state.CompareAndSwap(1, 0) {
			break
		}
		st.state.Store(1)
	}
	if cap(*bp) <= 64<<10 { // a large snapshot's buffer is not kept
		writeBufs.Put(bp)
	}
}

// write sends what st has queued (and a ping when one is due) in one
// write; buf is a pooled buffer.
func (s *Streams) write(st *stream, buf []byte) []byte {
	if st.ended.Load() {
		return buf
	}
	if st.checkUp.Swap(false) {
		// A client that closed its end is noticed here rather than by a
		// goroutine blocked reading: the deadline has passed, so Read
		// returns at once, with a timeout while the client is there.
		st.conn.SetReadDeadline(time.Unix(1, 0))
		var one [1]byte
		if _, err := st.conn.Read(one[:]); err != nil {
			var ne interface{ Timeout() bool }
			if !errors.As(err, &ne) || !ne.Timeout() {
				s.end(st)
				return buf
			}
		}
	}
	sink := bufSink{b: buf}
	if st.pingDue.Swap(false) {
		sink.b = append(sink.b, pingFrame(s.c.Revision())...)
	}
	pinged := len(sink.b)
	for {
		f, ok, closed := st.sub.frames.pop()
		if closed {
			s.end(st)
			return sink.b
		}
		if !ok {
			break
		}
		if err := s.c.deliver(st.sub, f, &sink, &st.last); err != nil {
			s.end(st)
			return sink.b
		}
	}
	if len(sink.b) == 0 {
		return sink.b
	}
	st.conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if _, err := st.conn.Write(sink.b); err != nil {
		s.end(st)
		return sink.b
	}
	if len(sink.b) > pinged {
		s.c.lastWrite.Store(time.Now().UnixNano())
	}
	return sink.b
}

// end closes a stream: its subscription, then its connection.
func (s *Streams) end(st *stream) {
	if st.ended.Swap(true) {
		return
	}
	s.mu.Lock()
	delete(s.all, st)
	s.mu.Unlock()
	s.c.closeStream(st.sub)
	st.conn.Close()
}

// pinger pings one bucket of streams every PingEvery/pingBuckets.
func (s *Streams) pinger() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.PingEvery / pingBuckets)
	defer t.Stop()
	var due []*stream
	for tick := 0; ; tick++ {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		b := tick % pingBuckets
		due = due[:0]
		s.mu.Lock()
		for st := range s.all {
			if st.bucket == b {
				due = append(due, st)
			}
		}
		s.mu.Unlock()
		for _, st := range due {
			st.checkUp.Store(true)
			st.pingDue.Store(true)
			s.schedule(st)
		}
		clear(due)
	}
}

// Close ends every stream and stops the writers.
func (s *Streams) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	all := make([]*stream, 0, len(s.all))
	for st := range s.all {
		all = append(all, st)
	}
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()
	for _, st := range all {
		s.end(st)
	}
}

// bufSink collects frames in a writer's buffer.
type bufSink struct{ b []byte }

func (b *bufSink) Write(f []byte) error { b.b = append(b.b, f...); return nil }
func (b *bufSink) Flush() error         { return nil }
