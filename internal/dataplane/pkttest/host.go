package pkttest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// Helpers for the data-plane tests that run in network namespaces and
// measure CPU time.

// Sh runs a command and returns its output; it fails the test if the
// command fails.
func Sh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// InNS runs fn on a thread switched into the named network namespace
// (sockets and programs made there stay there) and fails the test if fn
// fails.
func InNS(t testing.TB, name string, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked: it dies with the goroutine rather
		// than go back to the pool in the wrong namespace.
		target, err := netns.GetFromName(name)
		if err != nil {
			done <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	if err := <-done; err != nil {
		t.Fatalf("in namespace %s: %v", name, err)
	}
}

// Ksoftirqd returns the pid of ksoftirqd/cpu (0 if there is none).
func Ksoftirqd(cpu int) int {
	ents, _ := os.ReadDir("/proc")
	want := fmt.Sprintf("ksoftirqd/%d", cpu)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); err == nil && strings.TrimSpace(string(b)) == want {
			return pid
		}
	}
	return 0
}

// TaskCPU is a task's CPU time in nanoseconds (/proc/PID/schedstat; 0 for
// pid 0 or a task that is gone).
func TaskCPU(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(f[0], 10, 64)
	return n
}

// Median is the middle value of xs (the upper of the two middle ones).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
