// Package testenv decides whether a test that needs root or an external
// program may run here. Outside CI a missing prerequisite skips the test; in
// CI (STATEMESH_CI=1, set by .ci/run) it fails it, so CI can never pass by
// skipping.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under .ci/run.
func InCI() bool { return os.Getenv("STATEMESH_CI") == "1" }

// unavailable skips the test, or fails it in CI.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing under CI: "+format, args...)
	}
	t.Skipf("skipping: "+format, args...)
}

// RequireRoot skips (or fails in CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "test needs root")
	}
}

// RequireBinary returns the path of an external program, skipping (or
// failing in CI) when it is not installed.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		unavailable(t, "%s not installed (see .ci/run for the package)", name)
	}
	return p
}
