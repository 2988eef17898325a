package birdcfg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/statemesh/statemesh/internal/atomicfile"
)

// ErrMissing is returned when BIRD is not installed.
var ErrMissing = errors.New("bird is not installed (Debian: apt-get install bird2)")

// Check validates a configuration with `bird -p` and returns BIRD's own
// message (with the line) when it refuses it.
func Check(ctx context.Context, conf []byte) error {
	bin, err := exec.LookPath("bird")
	if err != nil {
		return ErrMissing
	}
	f, err := os.CreateTemp("", "statemesh-bird-*.conf")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(conf); err != nil {
		f.Close()
		return err
	}
	f.Close()
	out, err := exec.CommandContext(ctx, bin, "-p", "-c", f.Name()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("bird refuses the configuration: %s", strings.TrimSpace(strings.ReplaceAll(string(out), f.Name(), "bird.conf")))
	}
	return nil
}

// Runner runs one BIRD for the agent, with its config, control socket and
// pid file in Dir. BIRD runs in the foreground as the agent's child and
// is restarted when it exits.
type Runner struct {
	Dir string
	Log *slog.Logger
	// OnChange, when set, is called (from BIRD's log reader) when a
	// protocol changes state, e.g. a BFD session takes BGP down: the
	// agent reports at once instead of at its next interval.
	OnChange func()

	startMu sync.Mutex // serializes startOrAdopt
	mu      sync.Mutex
	pid     int
	exited  chan struct{}
	lastErr string
	stopped bool
}

func (r *Runner) conf() string   { return filepath.Join(r.Dir, "bird.conf") }
func (r *Runner) socket() string { return filepath.Join(r.Dir, "bird.ctl") }

// Apply validates conf and installs it: a configuration BIRD refuses is
// never written. It starts BIRD when it is not running and reloads it
// otherwise; changed is false when BIRD already ran this configuration.
func (r *Runner) Apply(ctx context.Context, conf []byte) (changed bool, err error) {
	if old, err := os.ReadFile(r.conf()); err == nil && bytes.Equal(old, conf) && r.running() {
		return false, nil
	}
	if err := Check(ctx, conf); err != nil {
		return false, err
	}
	if err := os.MkdirAll(r.Dir, 0o700); err != nil {
		return false, err
	}
	if err := atomicfile.WriteFile(r.conf(), conf, 0o600); err != nil {
		return false, err
	}
	if !r.running() {
		adopted, err := r.startOrAdopt()
		if err != nil || !adopted {
			return true, err
		}
		// An adopted BIRD runs what an earlier agent gave it: reload.
	}
	out, err := r.birdc(ctx, "configure")
	if err != nil {
		return true, fmt.Errorf("birdc configure: %w", err)
	}
	if !strings.Contains(out, "Reconfigured") && !strings.Contains(out, "Reconfiguration in progress") {
		return true, fmt.Errorf("birdc configure: %s", strings.TrimSpace(out))
	}
	return true, nil
}

func (r *Runner) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.exited == nil {
		return false
	}
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

// startOrAdopt runs BIRD, or adopts the one an earlier agent started (BIRD
// outlives the agent, like the WireGuard interfaces: an agent restart does
// not withdraw routes). A watcher restarts it (after a second) when it
// exits, and a tailer of its log calls OnChange on state changes.
//
// There is never more than one BIRD per Dir: starts are serialized, and a
// BIRD on this runner's socket that cannot be adopted (an agent killed
// while its BIRD was starting, or one that no longer answers) is stopped
// before a new one starts. Two would fight over the BGP sessions and the
// kernel's routes.
func (r *Runner) startOrAdopt() (adopted bool, err error) {
	r.startMu.Lock()
	defer r.startMu.Unlock()
	if r.running() {
		return true, nil // started or adopted meanwhile
	}
	if _, err := exec.LookPath("bird"); err != nil {
		return false, ErrMissing
	}
	pids := birdsOn(r.socket())
	if pid := r.adoptable(pids); pid > 0 {
		if r.Log != nil {
			r.Log.Info("adopted the running bird", "pid", pid)
		}
		// Others are killed outright: a BIRD that ends cleanly unlinks
		// its socket and pid file, which are the adopted one's now.
		killPids(without(pids, pid))
		r.watch(pid, filepath.Join(r.Dir, "bird.log"))
		return true, nil
	}
	if len(pids) > 0 {
		if r.Log != nil {
			r.Log.Warn("stopping a bird that does not answer on its control socket", "pids", pids)
		}
		stopPids(pids)
	}
	return false, r.start()
}

// start runs a new BIRD.
func (r *Runner) start() error {
	bin, err := exec.LookPath("bird")
	if err != nil {
		return ErrMissing
	}
	pidFile := filepath.Join(r.Dir, "bird.pid")
	logPath := filepath.Join(r.Dir, "bird.log")
	os.Remove(r.socket())
	os.Remove(pidFile)
	cmd := exec.Command(bin, "-f", "-c", r.conf(), "-s", r.socket(), "-P", pidFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // survives the agent
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("starting bird: %w", err)
	}
	go cmd.Wait() // reap it if it exits while this agent runs
	r.watch(cmd.Process.Pid, logPath)
	// Wait until the control socket answers.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		if _, err := r.birdc(ctx, "show status"); err == nil {
			return nil
		}
		if !r.running() {
			return errors.New(r.lastError())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bird did not open its control socket %s", r.socket())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// adoptable returns the one of pids (BIRDs on this runner's socket) that
// listens on the socket and answers there, or 0. A busy BIRD gets a few
// seconds to answer.
func (r *Runner) adoptable(pids []int) int {
	pid := socketOwner(r.socket(), pids)
	if pid == 0 {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	for {
		if _, err := r.birdc(ctx, "show status"); err == nil {
			return pid
		}
		if syscall.Kill(pid, 0) != nil || zombie(pid) {
			return 0
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// socketOwner returns the one of pids that listens on the unix socket at
// path (each BIRD start unlinks the path and binds anew, so an older BIRD
// may still run on a path it no longer owns), or 0. The kernel names the
// listener: SO_PEERCRED on a connection to it.
func socketOwner(path string, pids []int) int {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return 0
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil || !slices.Contains(pids, int(cred.Pid)) {
		return 0
	}
	return int(cred.Pid)
}

// birdsOn returns the live BIRD processes serving socket, oldest first
// (by pid, which is good enough between restarts of one agent).
func birdsOn(socket string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) != "bird" || zombie(pid) {
			continue
		}
		for i := 1; i+1 < len(args); i++ {
			if args[i] == "-s" && args[i+1] == socket {
				pids = append(pids, pid)
				break
			}
		}
	}
	slices.Sort(pids)
	return pids
}

func without(pids []int, pid int) []int {
	return slices.DeleteFunc(slices.Clone(pids), func(p int) bool { return p == pid })
}

// killPids ends BIRD processes at once, leaving their files alone.
func killPids(pids []int) {
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	stopPids(pids) // waits until they are gone
}

// stopPids ends BIRD processes: SIGTERM, and SIGKILL after 3 s.
func stopPids(pids []int) {
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(3 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil && !zombie(pid) {
			if time.Now().After(deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// watch follows BIRD process pid: its log for state changes, its life
// for restarts.
func (r *Runner) watch(pid int, logPath string) {
	exited := make(chan struct{})
	r.mu.Lock()
	r.pid, r.exited, r.stopped = pid, exited, false
	r.mu.Unlock()
	go r.tail(logPath, exited)
	go func() {
		for syscall.Kill(pid, 0) == nil && !zombie(pid) {
			time.Sleep(100 * time.Millisecond)
		}
		r.mu.Lock()
		r.lastErr = fmt.Sprintf("bird (pid %d) exited (see %s)", pid, logPath)
		stopped := r.stopped
		r.mu.Unlock()
		close(exited)
		if stopped {
			return
		}
		if r.Log != nil {
			r.Log.Error("bird exited; restarting", "pid", pid)
		}
		time.Sleep(time.Second)
		r.mu.Lock()
		stopped = r.stopped
		r.mu.Unlock()
		// Apply may have started (or adopted) one meanwhile.
		if !stopped && !r.running() {
			if _, err := r.startOrAdopt(); err != nil && r.Log != nil {
				r.Log.Error("restarting bird", "err", err)
			}
		}
	}()
}

// zombie reports whether pid has exited but is not reaped yet.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) STATE ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// tail reads BIRD's log from its end while BIRD runs and calls OnChange
// when a protocol changes state.
func (r *Runner) tail(logPath string, exited chan struct{}) {
	if r.OnChange == nil {
		return
	}
	f, err := os.Open(logPath)
	if err != nil {
		return
	}
	defer f.Close()
	f.Seek(0, io.SeekEnd)
	rd := bufio.NewReader(f)
	var partial string
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			partial += line
			select {
			case <-exited:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		line, partial = partial+line, ""
		if strings.Contains(line, "State changed to") {
			r.OnChange()
		}
	}
}

func (r *Runner) lastError() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// Stop ends BIRD (its routes leave the kernel with it).
func (r *Runner) Stop() {
	r.mu.Lock()
	pid, exited := r.pid, r.exited
	r.stopped = true
	r.mu.Unlock()
	if pid <= 0 || exited == nil {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(3 * time.Second):
		syscall.Kill(pid, syscall.SIGKILL)
		<-exited
	}
}

func (r *Runner) birdc(ctx context.Context, args ...string) (string, error) {
	bin, err := exec.LookPath("birdc")
	if err != nil {
		return "", ErrMissing
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append([]string{"-s", r.socket()}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Protocol is one line of `birdc show protocols`.
type Protocol struct {
	Name, Proto, State, Info string
}

// BFDSession is one line of `birdc show bfd sessions`.
type BFDSession struct {
	Address, Interface, State string
}

// Status is what BIRD reports.
type Status struct {
	Protocols []Protocol
	BFD       []BFDSession
}

// Status asks the running BIRD for its protocols and BFD sessions; it
// says why when BIRD is not running.
func (r *Runner) Status(ctx context.Context) (Status, error) {
	if !r.running() {
		if e := r.lastError(); e != "" {
			return Status{}, errors.New(e)
		}
		return Status{}, errors.New("bird is not running")
	}
	out, err := query(ctx, r.socket(), "show protocols")
	if err != nil {
		return Status{}, err
	}
	st := Status{Protocols: ParseProtocols(out)}
	if out, err := query(ctx, r.socket(), "show bfd sessions"); err == nil {
		st.BFD = ParseBFD(out)
	}
	return st, nil
}

// ParseProtocols parses `birdc show protocols` (with timeformat protocol
// "%s": the Since column has no spaces).
func ParseProtocols(out string) []Protocol {
	var ps []Protocol
	sc := bufio.NewScanner(strings.NewReader(out))
	header := false
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "Name" && f[1] == "Proto" {
			header = true
			continue
		}
		if !header || len(f) < 5 {
			continue
		}
		p := Protocol{Name: f[0], Proto: f[1], State: f[3]}
		if len(f) > 5 {
			p.Info = strings.Join(f[5:], " ")
		}
		ps = append(ps, p)
	}
	return ps
}

// ParseBFD parses `birdc show bfd sessions`.
func ParseBFD(out string) []BFDSession {
	var ss []BFDSession
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && strings.Count(f[0], ".") == 3 || len(f) >= 3 && strings.Contains(f[0], ":") && f[0] != "IP" && !strings.HasSuffix(f[0], ":") {
			ss = append(ss, BFDSession{Address: f[0], Interface: f[1], State: f[2]})
		}
	}
	return ss
}

// StopStale stops every BIRD an earlier agent left running in dir (the
// gateway is no longer in BIRD mode); it reports whether there was one.
func StopStale(dir string) bool {
	pids := birdsOn((&Runner{Dir: dir}).socket())
	stopPids(pids)
	return len(pids) > 0
}
