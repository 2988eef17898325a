package lab

import (
	"bufio"
	"path/filepath"

	"context"
	"encoding/json"
	"fmt"
	"github.com/statemesh/statemesh/internal/attest"
	"github.com/statemesh/statemesh/internal/tpm"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// hostPIDs returns the processes in a host's network namespace, except its
// holder.
func (l *Lab) hostPIDs(host string) ([]int, error) {
	h, ok := l.State.Host(host)
	if !ok {
		return nil, fmt.Errorf("no lab host %q", host)
	}
	out, err := sh("ip", "netns", "pids", h.NS())
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err == nil && pid != l.State.Holders[host] {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// KillHost kills every process of a host but its holder: the agent, its
// wireguard-go daemon and servers. The host's network state stays; with
// userspace WireGuard its interface goes with its daemon. It simulates the
// machine dying.
func (l *Lab) KillHost(host string) error {
	pids, err := l.hostPIDs(host)
	if err != nil {
		return err
	}
	for _, pid := range pids {
		killWait(pid)
	}
	return nil
}

// agentProc returns the host's agent process record.
func (l *Lab) agentProc(host string) (int, *Proc) {
	for i := range l.State.Procs {
		if p := &l.State.Procs[i]; p.Name == "agent" && p.Host == host {
			return i, p
		}
	}
	return -1, nil
}

// KillAgent kills only a host's agent (SIGKILL); the data plane stays.
func (l *Lab) KillAgent(host string) error {
	_, p := l.agentProc(host)
	if p == nil {
		return fmt.Errorf("no agent on %s", host)
	}
	killWait(p.PID)
	return nil
}

// StartAgent (re)starts a host's agent from its saved identity.
func (l *Lab) StartAgent(host string) error {
	i, p := l.agentProc(host)
	if p == nil {
		return fmt.Errorf("no agent on %s", host)
	}
	if alive(p.PID) {
		return fmt.Errorf("agent on %s is running (pid %d)", host, p.PID)
	}
	h, _ := l.State.Host(host)
	// The holder may have changed; rebuild the command line.
	argv := l.agentArgv(h, "")
	pid, err := startDetached(argv, p.Log, nil)
	if err != nil {
		return err
	}
	l.State.mu.Lock()
	l.State.Procs[i].PID = pid
	l.State.Procs[i].Argv = argv
	l.State.mu.Unlock()
	return l.State.save()
}

// Forget marks a host as removed from the mesh (checks leave it out).
func (l *Lab) Forget(host string) error {
	h, ok := l.State.Host(host)
	if !ok {
		return fmt.Errorf("no lab host %q", host)
	}
	h.Removed = true
	return l.State.save()
}

// StopController kills the controller.
func (l *Lab) StopController() { killWait(l.State.Controller.PID) }

// StartController restarts the controller on its data and waits for it.
func (l *Lab) StartController(ctx context.Context) error {
	if alive(l.State.Controller.PID) {
		return fmt.Errorf("controller is running (pid %d)", l.State.Controller.PID)
	}
	pid, err := startDetached(l.State.Controller.Argv, l.State.Controller.Log, nil)
	if err != nil {
		return err
	}
	l.State.Controller.PID = pid
	if err := l.State.save(); err != nil {
		return err
	}
	return l.waitController(ctx)
}

// WGPeers returns the public keys of a host's WireGuard peers (wg show).
func (l *Lab) WGPeers(ctx context.Context, host string) ([]string, error) {
	cmd, err := l.State.HostCmd(ctx, host, "wg", "show", "sm0", "peers")
	if err != nil {
		return nil, err
	}
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("wg show on %s: %w", host, err)
	}
	peers := strings.Fields(string(out))
	slices.Sort(peers)
	return peers, nil
}

// Streamer probes one target from a host continuously.
type Streamer struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	obs  []observation
	done chan struct{}
}

type observation struct {
	t  time.Time
	ok bool
}

// Stream starts probing target (TCP to the lab server) from a host (or its
// pod) every interval.
func (l *Lab) Stream(ctx context.Context, host string, pod bool, target netip.Addr, interval time.Duration) (*Streamer, error) {
	h, ok := l.State.Host(host)
	if !ok {
		return nil, fmt.Errorf("no lab host %q", host)
	}
	pre := nsenterArgs(l.State.Holders[host])
	if pod {
		pre = []string{"ip", "netns", "exec", h.PodNS()}
	}
	argv := append(pre, l.State.Config.Binary, "lab", "stream", "--target", netip.AddrPortFrom(target, servePort).String(), "--interval", interval.String())
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Streamer{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var o struct {
				T  int64 `json:"t"`
				OK bool  `json:"ok"`
			}
			if json.Unmarshal(sc.Bytes(), &o) == nil {
				s.mu.Lock()
				s.obs = append(s.obs, observation{time.Unix(0, o.T), o.OK})
				s.mu.Unlock()
			}
		}
	}()
	return s, nil
}

// WaitOK waits until n consecutive probes succeeded after since.
func (s *Streamer) WaitOK(since time.Time, n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		run := 0
		for _, o := range s.obs {
			if o.t.Before(since) {
				continue
			}
			if o.ok {
				run++
				if run >= n {
					s.mu.Unlock()
					return true
				}
			} else {
				run = 0
			}
		}
		s.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// Outage is the longest stretch without a successful probe after since:
// from the last success before the first failure to the next success.
func (s *Streamer) Outage(since time.Time) (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var worst time.Duration
	failures := 0
	var lastOK time.Time
	for _, o := range s.obs {
		if o.t.Before(since) {
			if o.ok {
				lastOK = o.t
			}
			continue
		}
		if !o.ok {
			failures++
			continue
		}
		if !lastOK.IsZero() && o.t.Sub(lastOK) > worst {
			worst = o.t.Sub(lastOK)
		}
		lastOK = o.t
	}
	return worst, failures
}

// Stop ends the stream.
func (s *Streamer) Stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Kill()
	}
	<-s.done
	s.cmd.Wait()
}

// Tamper extends a PCR of a host's software TPM (or the controller's: host
// "controller"), as a tampered boot would.
func (l *Lab) Tamper(host string, pcr int) error {
	url := l.State.ControllerTPM
	if host != "controller" {
		h, ok := l.State.Host(host)
		if !ok {
			return fmt.Errorf("no lab host %q", host)
		}
		url = h.TPM
	}
	if url == "" {
		return fmt.Errorf("%s has no TPM", host)
	}
	rw, err := tpm.Open(url)
	if err != nil {
		return err
	}
	defer rw.Close()
	return attest.ExtendPCR(rw, pcr, []byte("statemesh lab: simulated tampered boot"))
}

// WANLink changes a gateway's WAN link at the WAN switch's side, where an
// operator's provider would: mtu > 0 sets its MTU (larger frames are
// dropped silently, as a misconfigured hop does), up false cuts it.
func (l *Lab) WANLink(host string, mtu int, up bool) error {
	h, ok := l.State.Host(host)
	if !ok {
		return fmt.Errorf("no lab host %q", host)
	}
	if h.Role != "gateway" {
		return fmt.Errorf("%s is a %s; only gateways have a WAN link", host, h.Role)
	}
	port := fmt.Sprintf("g%d", h.RegionIdx*10+h.Index)
	args := []string{"ip", "-n", wanSwitch, "link", "set", port}
	if mtu > 0 {
		args = append(args, "mtu", strconv.Itoa(mtu))
	}
	if up {
		args = append(args, "up")
	} else {
		args = append(args, "down")
	}
	_, err := sh(args...)
	return err
}

// BirdSocket is the control socket of a BIRD-mode gateway's BIRD.
func (l *Lab) BirdSocket(host string) string {
	return filepath.Join(l.State.Config.Dir, "hosts", host, "bird", "bird.ctl")
}

// Birdc runs birdc against a gateway's BIRD.
func (l *Lab) Birdc(ctx context.Context, host string, args ...string) (string, error) {
	cmd, err := l.State.HostCmd(ctx, host, append([]string{"birdc", "-s", l.BirdSocket(host)}, args...)...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// WANLoss drops percent of the frames a gateway's WAN link carries in
// each direction, at the WAN switch (a lossy provider link; the kernel here
// has no netem). 0 removes the loss.
func (l *Lab) WANLoss(host string, percent int) error {
	h, ok := l.State.Host(host)
	if !ok {
		return fmt.Errorf("no lab host %q", host)
	}
	if h.Role != "gateway" {
		return fmt.Errorf("%s is a %s; only gateways have a WAN link", host, h.Role)
	}
	if percent < 0 || percent > 100 {
		return fmt.Errorf("loss %d%%: give 0..100", percent)
	}
	port := fmt.Sprintf("g%d", h.RegionIdx*10+h.Index)
	table := "smloss_" + port
	sh("ip", "netns", "exec", wanSwitch, "nft", "delete", "table", "bridge", table)
	if percent == 0 {
		return nil
	}
	script := fmt.Sprintf(`table bridge %[1]s {
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname %[2]q numgen random mod 100 < %[3]d drop
		oifname %[2]q numgen random mod 100 < %[3]d drop
	}
}
`, table, port, percent)
	cmd := exec.Command("ip", "netns", "exec", wanSwitch, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s", wanSwitch, err, out)
	}
	return nil
}

// StrangerNS is the namespace AddStranger makes.
const StrangerNS = nsPrefix + "stranger"

// AddStranger adds a machine on the WAN that is nobody's peer: a namespace
// with an address on the WAN switch (203.0.113.250, 2001:db8:113::250 on
// an IPv6 underlay), no agent and no WireGuard key. Tests send junk from
// it (a handshake flood at a gateway). `lab down` removes it.
func (l *Lab) AddStranger() (ns string, addr netip.Addr, err error) {
	cfg := l.State.Config
	addr = wanAddr(cfg.Underlay6(), 250)
	if err := l.addNS(StrangerNS); err != nil {
		return "", addr, err
	}
	return StrangerNS, addr, veth(StrangerNS, "wan0", wanSwitch, strangerPort, cfg.WANMTU, withBits(addr))
}

const strangerPort = "stranger"

// StrangerPort is the WAN switch's end of the stranger's link: its
// namespace and interface.
func StrangerPort() (ns, ifname string) { return wanSwitch, strangerPort }
