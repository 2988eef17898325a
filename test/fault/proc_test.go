package fault_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
)

// controllerProc is a `statemesh controller` process. It keeps its data
// dir and listen address across restarts, so clients' URLs stay valid.
type controllerProc struct {
	t       testing.TB
	name    string
	dataDir string
	addr    string // 127.0.0.1:PORT
	args    []string
	env     []string
	logPath string
	// metricsAddr serves /metrics when procOptions.metrics was set.
	metricsAddr string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

type procOptions struct {
	// dataDir defaults to a fresh t.TempDir().
	dataDir string
	// spec is applied at start (--apply) when set.
	spec string
	// etcd endpoints: the etcd store instead of bbolt.
	etcd       []string
	etcdPrefix string
	kekFile    string
	// metrics serves the controller's metrics (controllerProc.metric).
	metrics bool
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startController starts a controller process and waits until it serves.
func startController(t testing.TB, name string, o procOptions) *controllerProc {
	t.Helper()
	if o.dataDir == "" {
		o.dataDir = t.TempDir()
	}
	p := &controllerProc{t: t, name: name, dataDir: o.dataDir, addr: freeAddr(t), logPath: filepath.Join(t.TempDir(), name+".log")}
	if o.metrics {
		p.metricsAddr = freeAddr(t)
	}
	p.args = []string{"controller", "--data-dir", o.dataDir, "--listen", p.addr, "--metrics-listen", p.metricsAddr, "--log-level", "warn", "--gateway-timeout", "1h"}
	if o.spec != "" {
		path := filepath.Join(t.TempDir(), "spec.yaml")
		if err := os.WriteFile(path, []byte(o.spec), 0o600); err != nil {
			t.Fatal(err)
		}
		p.args = append(p.args, "--apply", path)
	}
	if len(o.etcd) > 0 {
		p.args = append(p.args, "--store", "etcd", "--etcd-endpoints", strings.Join(o.etcd, ","), "--etcd-prefix", o.etcdPrefix, "--kek-file", o.kekFile)
	}
	t.Cleanup(p.kill)
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	return p
}

// URL is the controller's API address.
func (p *controllerProc) URL() string { return "https://" + p.addr }

func (p *controllerProc) start() error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(statemeshBin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = logf, io.MultiWriter(logf, pw)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	done := make(chan struct{})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			if strings.Contains(sc.Text(), "controller ready on") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		logf.Close()
		close(done)
	}()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	select {
	case <-ready:
		return nil
	case <-done:
		return fmt.Errorf("controller %s exited at start:\n%s", p.name, p.log())
	case <-time.After(30 * time.Second):
		p.kill()
		return fmt.Errorf("controller %s not ready after 30s:\n%s", p.name, p.log())
	}
}

// kill sends SIGKILL (a crash: no shutdown path runs) and waits.
func (p *controllerProc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// restart starts a killed controller again on the same data and address.
func (p *controllerProc) restart() error {
	p.kill()
	return p.start()
}

// pid returns the process id (0 when not running).
func (p *controllerProc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *controllerProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// adminConfig reads the admin.json the controller wrote, pointed at url.
func adminConfig(t testing.TB, dataDir, url string) api.AdminConfig {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "admin.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg api.AdminConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("admin.json: %v", err)
	}
	cfg.Server = url
	return cfg
}

func adminClient(t testing.TB, cfg api.AdminConfig) *apiclient.Client {
	t.Helper()
	c, err := apiclient.NewAdmin(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rssBytes returns a process's resident set size from /proc.
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			n, err := strconv.ParseInt(f[0], 10, 64)
			return n * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

func bounded(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
