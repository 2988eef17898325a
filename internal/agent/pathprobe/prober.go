package pathprobe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// ipICMPHeader is the IPv4 and ICMP echo header bytes of a probe.
const ipICMPHeader = 20 + 8

// Prober sends ICMP echoes with DF set (IP_PMTUDISC_PROBE: the kernel
// neither fragments nor uses its cached path MTU) over a raw socket and
// matches the replies by identifier and sequence.
type Prober struct {
	conn *net.IPConn
	id   int

	mu      sync.Mutex
	seq     int
	waiting map[int]chan struct{}
	closed  chan struct{}
}

// NewProber opens the raw socket (needs CAP_NET_RAW).
func NewProber() (*Prober, error) {
	c, err := net.ListenIP("ip4:icmp", &net.IPAddr{IP: net.IPv4zero})
	if err != nil {
		return nil, fmt.Errorf("opening an ICMP socket (needs CAP_NET_RAW): %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, 3 /* IP_PMTUDISC_PROBE */)
	}); err != nil || serr != nil {
		c.Close()
		return nil, fmt.Errorf("setting DF on the probe socket: %v %v", err, serr)
	}
	p := &Prober{conn: c, id: rand.IntN(0xffff), waiting: map[int]chan struct{}{}, closed: make(chan struct{})}
	go p.read()
	return p, nil
}

// Close releases the socket.
func (p *Prober) Close() error {
	err := p.conn.Close()
	<-p.closed
	return err
}

func (p *Prober) read() {
	defer close(p.closed)
	buf := make([]byte, 65536)
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.ID != p.id {
			continue
		}
		p.mu.Lock()
		if ch, ok := p.waiting[e.Seq]; ok {
			close(ch)
			delete(p.waiting, e.Seq)
		}
		p.mu.Unlock()
	}
}

// Echo sends one echo of size bytes (the whole IP packet) to dst and waits
// up to timeout for the reply. It returns the round trip, or false.
func (p *Prober) Echo(ctx context.Context, dst netip.Addr, size int, timeout time.Duration) (time.Duration, bool) {
	if size < ipICMPHeader {
		size = ipICMPHeader
	}
	p.mu.Lock()
	p.seq = (p.seq + 1) & 0xffff
	seq := p.seq
	ch := make(chan struct{})
	p.waiting[seq] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.waiting, seq)
		p.mu.Unlock()
	}()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: seq, Data: make([]byte, size-ipICMPHeader)}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return 0, false
	}
	start := time.Now()
	if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		// EMSGSIZE: larger than the interface MTU.
		return 0, false
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return time.Since(start), true
	case <-t.C:
	case <-ctx.Done():
	}
	return 0, false
}

// Options of a path measurement.
type Options struct {
	Echoes  int           // small echoes for RTT and loss (default 3)
	Timeout time.Duration // per echo (default 1s)
}

// Measure measures one path: RTT and loss with small echoes, then the path
// MTU between MinMTU and mtu (the interface's) with DF echoes; a size
// counts as crossing when one of two echoes comes back.
func (p *Prober) Measure(ctx context.Context, dst netip.Addr, mtu int, opts Options) Result {
	if opts.Echoes == 0 {
		opts.Echoes = 3
	}
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	r := Result{Planned: mtu}
	var rtts []time.Duration
	for range opts.Echoes {
		if d, ok := p.Echo(ctx, dst, 64, opts.Timeout); ok {
			rtts = append(rtts, d)
		}
	}
	r.Loss = 1 - float64(len(rtts))/float64(opts.Echoes)
	if len(rtts) == 0 {
		return r
	}
	slices.Sort(rtts)
	r.RTT = rtts[len(rtts)/2]
	// A probe of full size should take about an RTT; wait generously.
	timeout := min(opts.Timeout, 4*r.RTT+100*time.Millisecond)
	r.PathMTU = Search(MinMTU, mtu, func(size int) bool {
		for range 2 {
			if _, ok := p.Echo(ctx, dst, size, timeout); ok {
				return true
			}
		}
		return false
	})
	return r
}

// ErrNoTargets is returned when there is nothing to probe.
var ErrNoTargets = errors.New("no paths to probe")
