package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The lab raises the machine's limits that are lower than a large lab
// needs, leaves higher ones alone, and says what it cannot see.
func TestRaiseHostLimits(t *testing.T) {
	root := t.TempDir()
	write := func(p, v string) {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p string) string {
		b, _ := os.ReadFile(filepath.Join(root, p))
		return strings.TrimSpace(string(b))
	}
	write("fs/inotify/max_user_instances", "128")
	write("net/ipv4/neigh/default/gc_thresh1", "128")
	write("net/ipv4/neigh/default/gc_thresh2", "512")
	write("net/ipv4/neigh/default/gc_thresh3", "1024")
	write("net/ipv6/neigh/default/gc_thresh3", "100000") // higher: kept
	var out strings.Builder
	l := &Lab{out: &out}
	if err := l.raiseHostLimits(root); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		"fs/inotify/max_user_instances":     "8192",
		"net/ipv4/neigh/default/gc_thresh1": "8192",
		"net/ipv4/neigh/default/gc_thresh2": "32768",
		"net/ipv4/neigh/default/gc_thresh3": "65536",
		"net/ipv6/neigh/default/gc_thresh3": "100000",
	} {
		if got := read(p); got != want {
			t.Errorf("%s = %s, want %s", p, got, want)
		}
	}
	if !strings.Contains(out.String(), "raised net.ipv4.neigh.default.gc_thresh3 to 65536") {
		t.Errorf("progress does not say what was raised:\n%s", out.String())
	}
	// ipv6 gc_thresh1 and 2 are missing here (as in a namespace that is
	// not the host's): said, not an error.
	if !strings.Contains(out.String(), "2 of the machine's limits") {
		t.Errorf("progress does not say what it could not see:\n%s", out.String())
	}
}
