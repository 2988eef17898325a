// Package etcdtest starts real etcd servers (Debian's etcd-server binary)
// on loopback for tests and benchmarks: one member, or a cluster of several
// whose members can be killed and restarted.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/statemesh/statemesh/internal/testenv"
)

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	peerURL   string
	dir       string
	args      []string
	binary    string
	cmd       *exec.Cmd
	logPath   string
	waitDone  chan struct{}
}

// Cluster is a running etcd cluster.
type Cluster struct {
	Members []*Member
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.ClientURL)
	}
	return out
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs an etcd cluster of n members in t.TempDir and stops it when
// the test ends. It skips (fails under CI) when etcd is not installed.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := testenv.RequireBinary(t, "etcd")
	dir := t.TempDir()
	c := &Cluster{}
	var initial []string
	token := fmt.Sprintf("statemesh-test-%d", time.Now().UnixNano())
	for i := range n {
		m := &Member{Name: fmt.Sprintf("m%d", i), binary: bin}
		m.ClientURL = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		m.peerURL = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		m.dir = filepath.Join(dir, m.Name)
		m.logPath = filepath.Join(dir, m.Name+".log")
		initial = append(initial, m.Name+"="+m.peerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.args = []string{
			"--name", m.Name, "--data-dir", m.dir,
			"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.peerURL, "--initial-advertise-peer-urls", m.peerURL,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			"--logger", "zap", "--log-level", "error",
			"--heartbeat-interval", "50", "--election-timeout", "500",
			"--snapshot-count", "100000", "--quota-backend-bytes", fmt.Sprint(8 << 30),
			"--max-txn-ops", "1024",
		}
		if err := m.start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Kill()
		}
	})
	c.WaitHealthy(t)
	return c
}

func (m *Member) start() error {
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(m.binary, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+os.Getenv("ETCD_UNSUPPORTED_ARCH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting etcd %s: %w", m.Name, err)
	}
	m.cmd = cmd
	m.waitDone = make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(m.waitDone)
	}()
	return nil
}

// Kill stops the member with SIGKILL (a crash) and waits for it to exit.
func (m *Member) Kill() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
	<-m.waitDone
	m.cmd = nil
}

// Restart starts a killed member again on its data.
func (m *Member) Restart(t testing.TB) {
	t.Helper()
	args := append([]string(nil), m.args...)
	for i, a := range args {
		if a == "--initial-cluster-state" {
			args[i+1] = "existing"
		}
	}
	m.args = args
	if err := m.start(); err != nil {
		t.Fatal(err)
	}
}

// Log returns the member's log (for failure messages).
func (m *Member) Log() string {
	b, _ := os.ReadFile(m.logPath)
	return string(b)
}

// WaitHealthy waits until every running member answers.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, m := range c.Members {
		if m.cmd == nil {
			continue
		}
		for {
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL}, DialTimeout: time.Second, Logger: zap.NewNop()})
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err = cli.Get(ctx, "health-probe")
				cancel()
				cli.Close()
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("etcd member %s not healthy after 30s: %v\n%s", m.Name, err, m.Log())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
