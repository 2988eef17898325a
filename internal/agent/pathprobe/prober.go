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
	"golang.org/x/net/ipv6"
)

// The IP and ICMP echo header bytes of a probe, per family.
const (
	ipICMPHeader  = 20 + 8
	ip6ICMPHeader = 40 + 8
)

// Socket options the syscall package lacks (linux/in6.h).
const (
	ipv6MTUDiscover = 23 // IPV6_MTU_DISCOVER
	pmtuDiscProbe   = 3  // IP_PMTUDISC_PROBE, IPV6_PMTUDISC_PROBE
	protoICMPv6     = 58
	protoICMPv4     = 1
)

// Prober sends ICMP and ICMPv6 echoes that may not be fragmented
// (IP_PMTUDISC_PROBE, IPV6_PMTUDISC_PROBE: the kernel neither fragments nor
// uses its cached path MTU; IPv6 routers never fragment) over raw sockets
// and matches the replies by identifier and sequence.
type Prober struct {
	conn  *net.IPConn // IPv4
	conn6 *net.IPConn // IPv6; nil where the host has no IPv6
	id    int

	mu      sync.Mutex
	seq     int
	waiting map[int]chan struct{}
	closed  chan struct{}
}

// NewProber opens the raw sockets (needs CAP_NET_RAW). A host without
// IPv6 gets a prober for IPv4 only.
func NewProber() (*Prober, error) {
	c, err := rawSocket("ip4:icmp", net.IPv4zero, syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER)
	if err != nil {
		return nil, err
	}
	p := &Prober{conn: c, id: rand.IntN(0xffff), waiting: map[int]chan struct{}{}, closed: make(chan struct{})}
	readers := 1
	if c6, err := rawSocket("ip6:ipv6-icmp", net.IPv6unspecified, syscall.IPPROTO_IPV6, ipv6MTUDiscover); err == nil {
		p.conn6 = c6
		readers++
	}
	var wg sync.WaitGroup
	wg.Add(readers)
	go func() { defer wg.Done(); p.read(p.conn, protoICMPv4) }()
	if p.conn6 != nil {
		go func() { defer wg.Done(); p.read(p.conn6, protoICMPv6) }()
	}
	go func() { wg.Wait(); close(p.closed) }()
	return p, nil
}

// rawSocket opens a raw ICMP socket whose packets may not be fragmented.
func rawSocket(network string, any net.IP, level, opt int) (*net.IPConn, error) {
	c, err := net.ListenIP(network, &net.IPAddr{IP: any})
	if err != nil {
		return nil, fmt.Errorf("opening an ICMP socket (%s; needs CAP_NET_RAW): %w", network, err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), level, opt, pmtuDiscProbe)
	}); err != nil || serr != nil {
		c.Close()
		return nil, fmt.Errorf("setting DF on the %s probe socket: %v %v", network, err, serr)
	}
	return c, nil
}

// IPv6 reports whether the prober can probe IPv6 paths.
func (p *Prober) IPv6() bool { return p.conn6 != nil }

// Close releases the sockets.
func (p *Prober) Close() error {
	err := p.conn.Close()
	if p.conn6 != nil {
		p.conn6.Close()
	}
	<-p.closed
	return err
}

func (p *Prober) read(conn *net.IPConn, proto int) {
	reply := icmp.Type(ipv4.ICMPTypeEchoReply)
	if proto == protoICMPv6 {
		reply = ipv6.ICMPTypeEchoReply
	}
	buf := make([]byte, 65536)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
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
	dst = dst.Unmap()
	conn, header, typ := p.conn, ipICMPHeader, icmp.Type(ipv4.ICMPTypeEcho)
	if dst.Is6() {
		if p.conn6 == nil {
			return 0, false
		}
		conn, header, typ = p.conn6, ip6ICMPHeader, ipv6.ICMPTypeEchoRequest
	}
	if size < header {
		size = header
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
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: p.id, Seq: seq, Data: make([]byte, size-header)}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return 0, false
	}
	start := time.Now()
	if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
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
// MTU between the family's minimum (MinMTU, MinMTU6) and mtu (the
// interface's) with echoes that may not be fragmented; a size counts as
// crossing when one of two echoes comes back.
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
	lo := MinMTU
	if dst.Unmap().Is6() {
		lo = MinMTU6
	}
	r.PathMTU = Search(lo, mtu, func(size int) bool {
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
