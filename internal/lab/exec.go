package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// sh runs a command and returns its output, with the output in the error.
func sh(args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// nsenterArgs returns the argv prefix that runs a command on a host: in
// its holder's network and mount namespaces.
func nsenterArgs(holder int) []string {
	return []string{"nsenter", "-t", strconv.Itoa(holder), "-n", "-m", "--"}
}

// HostCmd returns a command that runs argv on a host.
func (s *State) HostCmd(ctx context.Context, host string, argv ...string) (*exec.Cmd, error) {
	pid, ok := s.Holders[host]
	if !ok {
		return nil, fmt.Errorf("no lab host %q (statemesh lab status lists them)", host)
	}
	full := append(nsenterArgs(pid), argv...)
	return exec.CommandContext(ctx, full[0], full[1:]...), nil
}

// startDetached starts a long-running process in its own session with its
// output in a log file.
func startDetached(argv []string, logPath string, env []string) (int, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	defer lf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %v: %w", argv, err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait()
	return pid, nil
}

// alive reports whether a process exists and is not a zombie.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && err != syscall.EPERM {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// killWait sends SIGKILL and waits (bounded) for the process to go. It
// never kills the calling process: a Go program that entered a lab
// namespace on a locked thread which then ended on the main thread keeps
// that thread (Go parks the main thread rather than exiting it), so
// 'ip netns pids' lists the program among the namespace's processes, and
// lab down killed the e2e test binary that ran it ("signal: killed").
func killWait(pid int) {
	if pid <= 0 || pid == os.Getpid() {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 500 && alive(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}
