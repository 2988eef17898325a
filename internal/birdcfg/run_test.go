package birdcfg

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/testenv"
)

// A configuration without kernel or BGP protocols: BIRD runs but touches
// nothing of this machine's routing.
const harmless = "router id 192.0.2.1;\nprotocol device { scan time 10; }\n"

func TestRunnerInstallsOnlyWhatParses(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "bird")
	testenv.RequireBinary(t, "birdc")
	ctx := context.Background()
	dir := t.TempDir()
	r := &Runner{Dir: dir}
	t.Cleanup(r.Stop)

	if _, err := r.Apply(ctx, []byte("router id nonsense;\n")); err == nil || !strings.Contains(err.Error(), "bird.conf:1") {
		t.Fatalf("a broken config: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bird.conf")); !os.IsNotExist(err) {
		t.Fatal("a config bird -p refuses was written")
	}
	if changed, err := r.Apply(ctx, []byte(harmless)); err != nil || !changed {
		t.Fatalf("first apply: %v %v", changed, err)
	}
	st, err := r.Status(ctx)
	if err != nil || len(st.Protocols) != 1 || st.Protocols[0].Name != "device1" || st.Protocols[0].State != "up" {
		t.Fatalf("status: %+v %v", st, err)
	}
	if changed, err := r.Apply(ctx, []byte(harmless)); err != nil || changed {
		t.Errorf("same config again: changed %v, %v", changed, err)
	}
	// A bad config while running: refused, the running one stays.
	if _, err := r.Apply(ctx, []byte(harmless+"protocol bogus {}\n")); err == nil {
		t.Error("bad config accepted while running")
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "bird.conf")); string(got) != harmless {
		t.Error("the installed config changed after a refused one")
	}
	// A new good config is reloaded, not restarted.
	pid := readPID(t, dir)
	if changed, err := r.Apply(ctx, []byte(harmless+"protocol static s4 { ipv4; }\n")); err != nil || !changed {
		t.Fatalf("reload: %v %v", changed, err)
	}
	if st, _ := r.Status(ctx); len(st.Protocols) != 2 || readPID(t, dir) != pid {
		t.Errorf("after reload: %+v (pid %d → %d)", st.Protocols, pid, readPID(t, dir))
	}
	// BIRD crashes: Status says so, and it is back within seconds.
	syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(time.Second)
	sawDown := false
	for time.Now().Before(deadline) && !sawDown {
		if _, err := r.Status(ctx); err != nil && strings.Contains(err.Error(), "exited") {
			sawDown = true
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !sawDown {
		t.Error("Status did not report the crash")
	}
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := r.Status(ctx); err == nil && len(st.Protocols) == 2 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, err := r.Status(ctx); err != nil || len(st.Protocols) != 2 {
		t.Fatalf("bird not restarted: %v", err)
	}
	// A new runner (the agent restarted) adopts the running BIRD and
	// reloads it with its configuration.
	pid = readPID(t, dir)
	r2 := &Runner{Dir: dir}
	t.Cleanup(r2.Stop)
	if _, err := r2.Apply(ctx, []byte(harmless)); err != nil {
		t.Fatal(err)
	}
	if st, err := r2.Status(ctx); err != nil || len(st.Protocols) != 1 || readPID(t, dir) != pid {
		t.Errorf("adoption: %+v %v, pid %d → %d", st.Protocols, err, pid, readPID(t, dir))
	}
	r.mu.Lock()
	r.stopped = true // the first runner is gone, as with a dead agent
	r.mu.Unlock()

	// Two BIRDs on the socket (BIRD refuses to start while another answers
	// on it, but an earlier agent that gave up on an adoption removed the
	// socket file and started a second one): the next runner adopts the
	// one that owns the socket and stops the other, so one is left.
	r2.mu.Lock()
	r2.stopped = true
	r2.mu.Unlock()
	extra := exec.Command("bird", "-f", "-c", filepath.Join(dir, "bird.conf"), "-s", filepath.Join(dir, "bird.ctl"), "-P", filepath.Join(dir, "bird.pid"))
	extra.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	os.Remove(filepath.Join(dir, "bird.ctl"))
	if err := extra.Start(); err != nil {
		t.Fatal(err)
	}
	go extra.Wait()
	t.Cleanup(func() { extra.Process.Kill() })
	waitAnswers(t, r2)
	if got := birdsOn(filepath.Join(dir, "bird.ctl")); len(got) != 2 {
		t.Fatalf("set-up: birds on the socket %v, want 2", got)
	}
	r3 := &Runner{Dir: dir}
	t.Cleanup(r3.Stop)
	if _, err := r3.Apply(ctx, []byte(harmless)); err != nil {
		t.Fatal(err)
	}
	if got := birdsOn(filepath.Join(dir, "bird.ctl")); len(got) != 1 || got[0] != extra.Process.Pid {
		t.Errorf("after adoption with two birds: %v, want only %d (the socket's owner)", got, extra.Process.Pid)
	}
	if st, err := r3.Status(ctx); err != nil || len(st.Protocols) != 1 {
		t.Errorf("adopted bird: %+v %v", st, err)
	}
	pid = extra.Process.Pid
	r3.Stop()
	if _, err := r3.Status(ctx); err == nil {
		t.Error("Status after Stop says running")
	}
	if syscall.Kill(pid, 0) == nil && !zombie(pid) {
		t.Error("bird still runs after Stop")
	}
	// A bird left in a directory whose gateway left BIRD mode is stopped.
	if StopStale(dir) {
		t.Error("StopStale found a bird after Stop")
	}
}

// waitAnswers waits until a BIRD answers on r's socket.
func waitAnswers(t *testing.T, r *Runner) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := r.birdc(context.Background(), "show status"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("bird does not answer on its socket")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readPID(t *testing.T, dir string) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "bird.pid"))
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && pid > 0 {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("no bird.pid: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
