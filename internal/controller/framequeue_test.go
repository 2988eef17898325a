package controller

import "testing"

func TestFrameQueue(t *testing.T) {
	q := newFrameQueue(3)
	select {
	case <-q.ready:
		t.Fatal("a new queue is ready")
	default:
	}
	for i := int64(1); i <= 3; i++ {
		if !q.push(frame{rev: i}) {
			t.Fatalf("push %d refused below the bound", i)
		}
	}
	if q.push(frame{rev: 4}) {
		t.Fatal("push beyond the bound accepted")
	}
	<-q.ready // one token for the pushes
	for want := int64(1); want <= 3; want++ {
		f, ok, closed := q.pop()
		if !ok || closed || f.rev != want {
			t.Fatalf("pop: rev %d ok %v closed %v, want rev %d", f.rev, ok, closed, want)
		}
	}
	if _, ok, closed := q.pop(); ok || closed {
		t.Fatal("pop from an empty queue")
	}
	// Room again after popping; clear drops what is queued.
	q.push(frame{rev: 5})
	q.push(frame{rev: 6})
	if q.clear() {
		t.Fatal("clear reports an open queue closed")
	}
	if f, ok, _ := q.pop(); ok {
		t.Fatalf("clear left frame %d", f.rev)
	}
	// A burst's backing array is let go once the queue is empty.
	big := newFrameQueue(1000)
	for i := range 500 {
		big.push(frame{rev: int64(i)})
	}
	for {
		if _, ok, _ := big.pop(); !ok {
			break
		}
	}
	if cap(big.buf) != 0 {
		t.Errorf("an emptied queue keeps %d frames of capacity", cap(big.buf))
	}
	// Closed: the writer wakes and is told, pushes are refused.
	q.push(frame{rev: 7})
	<-q.ready
	q.close()
	select {
	case <-q.ready:
	default:
		t.Fatal("close did not wake the writer")
	}
	if _, _, closed := q.pop(); !closed || q.push(frame{rev: 8}) || !q.clear() {
		t.Fatal("a closed queue still takes or gives frames")
	}
}
