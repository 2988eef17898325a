package cli

import (
	"strings"
	"testing"
)

// Metrics listened on every interface by default; they are local unless
// the operator says otherwise.
func TestMetricsListenOnLoopbackByDefault(t *testing.T) {
	for _, cmd := range []struct {
		name string
		args []string
	}{{"controller", []string{"controller"}}, {"agent", []string{"agent"}}} {
		c := newRoot(&env{})
		sub, _, err := c.Find(cmd.args)
		if err != nil {
			t.Fatal(err)
		}
		f := sub.Flags().Lookup("metrics-listen")
		if f == nil {
			t.Fatalf("%s has no --metrics-listen", cmd.name)
		}
		if !strings.HasPrefix(f.DefValue, "127.0.0.1:") {
			t.Errorf("%s --metrics-listen defaults to %q, want 127.0.0.1:PORT", cmd.name, f.DefValue)
		}
	}
}

// A node's status cannot forge table rows or send escape sequences
// through the CLI's tables and text.
func TestTerminalOutputIsEscaped(t *testing.T) {
	var b strings.Builder
	tb := newTable(&b, "NAME", "FIREWALL")
	tb.row("n1", "enforced\x1b[2J\nfake-row\tstrong")
	tb.flush()
	if strings.ContainsAny(b.String(), "\x1b") || strings.Count(b.String(), "\n") != 2 {
		t.Errorf("table passed control characters through:\n%q", b.String())
	}
	b.Reset()
	w := terminalSafe(&b)
	w.Write([]byte("QUARANTINED  n1\x1b]0;pwned\x07\r\nnext line\n"))
	if strings.ContainsAny(b.String(), "\x1b\x07\r") || !strings.Contains(b.String(), `\x1b]0;pwned`) {
		t.Errorf("text output passed control characters through: %q", b.String())
	}
}
