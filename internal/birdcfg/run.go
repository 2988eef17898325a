package birdcfg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
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

	mu      sync.Mutex
	cmd     *exec.Cmd
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
	if err := writeAtomic(r.conf(), conf); err != nil {
		return false, err
	}
	if !r.running() {
		return true, r.start()
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

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
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

// start runs BIRD; a watcher restarts it (after a second) when it exits.
func (r *Runner) start() error {
	bin, err := exec.LookPath("bird")
	if err != nil {
		return ErrMissing
	}
	os.Remove(r.socket())
	cmd := exec.Command(bin, "-f", "-c", r.conf(), "-s", r.socket(), "-P", filepath.Join(r.Dir, "bird.pid"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	logf, err := os.OpenFile(filepath.Join(r.Dir, "bird.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		logf.Close()
		pr.Close()
		pw.Close()
		return fmt.Errorf("starting bird: %w", err)
	}
	pw.Close()
	go func() {
		// Copy BIRD's log to bird.log and watch it for state changes.
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if r.OnChange != nil && strings.Contains(line, "State changed to") {
				r.OnChange()
			}
		}
		pr.Close()
		logf.Close()
	}()
	exited := make(chan struct{})
	r.mu.Lock()
	r.cmd, r.exited, r.stopped = cmd, exited, false
	r.mu.Unlock()
	go func() {
		err := cmd.Wait()
		r.mu.Lock()
		r.lastErr = fmt.Sprintf("bird exited: %v (see %s)", err, filepath.Join(r.Dir, "bird.log"))
		stopped := r.stopped
		r.mu.Unlock()
		close(exited)
		if stopped {
			return
		}
		if r.Log != nil {
			r.Log.Error("bird exited; restarting", "err", err)
		}
		time.Sleep(time.Second)
		r.mu.Lock()
		stopped = r.stopped
		r.mu.Unlock()
		if !stopped {
			if err := r.start(); err != nil && r.Log != nil {
				r.Log.Error("restarting bird", "err", err)
			}
		}
	}()
	// Wait until the control socket answers.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		if _, err := r.birdc(ctx, "show status"); err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New(r.lastError())
		case <-ctx.Done():
			return fmt.Errorf("bird did not open its control socket %s", r.socket())
		case <-time.After(50 * time.Millisecond):
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
	cmd, exited := r.cmd, r.exited
	r.stopped = true
	r.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(3 * time.Second):
		cmd.Process.Kill()
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
	out, err := r.birdc(ctx, "show", "protocols")
	if err != nil {
		return Status{}, err
	}
	st := Status{Protocols: ParseProtocols(out)}
	if out, err := r.birdc(ctx, "show", "bfd", "sessions"); err == nil {
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
