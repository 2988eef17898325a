package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// Target is something to probe.
type Target struct {
	Name string     `json:"name"`
	Addr netip.Addr `json:"addr"`
}

// ProbeResult is the outcome of probing one target from one source.
type ProbeResult struct {
	From string `json:"from"`
	To   string `json:"to"`
	ICMP bool   `json:"icmp"`
	TCP  bool   `json:"tcp"`
	// Peer is what the TCP server answered (its name): proof the packet
	// reached the right host.
	Peer  string        `json:"peer,omitempty"`
	RTT   time.Duration `json:"rtt"`
	Error string        `json:"error,omitempty"`
}

// Probe probes targets from the calling process's network namespace: one
// ICMP echo (ping) and one TCP connection to the lab server on each.
func Probe(ctx context.Context, from string, targets []Target, port int, timeout time.Duration) []ProbeResult {
	out := make([]ProbeResult, len(targets))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r := ProbeResult{From: from, To: t.Name}
			secs := strconv.Itoa(max(1, int(timeout/time.Second)))
			if err := exec.CommandContext(ctx, "ping", "-c", "1", "-W", secs, "-q", t.Addr.String()).Run(); err == nil {
				r.ICMP = true
			}
			start := time.Now()
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(t.Addr, uint16(port)).String(), timeout)
			if err == nil {
				c.SetDeadline(time.Now().Add(timeout))
				line, rerr := bufio.NewReader(c).ReadString('\n')
				c.Close()
				if rerr == nil {
					r.TCP = true
					r.Peer = line[:len(line)-1]
					r.RTT = time.Since(start)
				} else {
					r.Error = rerr.Error()
				}
			} else {
				r.Error = err.Error()
			}
			out[i] = r
		}()
	}
	wg.Wait()
	return out
}

// Serve answers every TCP connection with the host's name and a newline.
func Serve(ctx context.Context, port int, name string) error {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			fmt.Fprintf(c, "%s\n", name)
			c.Close()
		}()
	}
}

// streamTimeout bounds one stream probe: long enough that a scheduling
// hiccup of a loaded 2-core machine is not an outage, short enough to
// time failovers to a tenth of a second.
const streamTimeout = 100 * time.Millisecond

// Stream probes one target by TCP every interval until ctx ends and writes
// one JSON line per attempt: {"t": unix nanos, "ok": bool}.
func Stream(ctx context.Context, target netip.AddrPort, interval time.Duration, w io.Writer) {
	enc := json.NewEncoder(w)
	t := time.NewTicker(interval)
	defer t.Stop()
	timeout := max(interval, streamTimeout)
	for {
		start := time.Now()
		c, err := net.DialTimeout("tcp", target.String(), timeout)
		ok := err == nil
		if ok {
			c.SetDeadline(time.Now().Add(timeout))
			_, rerr := bufio.NewReader(c).ReadString('\n')
			ok = rerr == nil
			c.Close()
		}
		enc.Encode(struct {
			T  int64 `json:"t"`
			OK bool  `json:"ok"`
		}{start.UnixNano(), ok})
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
