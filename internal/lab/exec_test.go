package lab

import (
	"os"
	"os/exec"
	"testing"
)

// TestKillWaitSparesItsCaller: lab down kills the processes 'ip netns
// pids' lists in the lab's namespaces, which may include the program
// running it (a thread of it parked in one); killWait must not kill its
// caller. On the old code this test process dies of SIGKILL.
func TestKillWaitSparesItsCaller(t *testing.T) {
	killWait(os.Getpid())
	killWait(0)
	// It still kills others.
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	killWait(cmd.Process.Pid)
	if err := <-done; err == nil {
		t.Fatal("sleep was not killed")
	}
}
