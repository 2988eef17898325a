package firewall

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/statemesh/statemesh/internal/testenv"
)

// TestReadGeneration: the kernel's ruleset generation moves on with every
// nft change in the namespace, and not with a listing.
func TestReadGeneration(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	inNewNetns(t, func() {
		ctx := context.Background()
		read := func() uint32 {
			t.Helper()
			g, err := readGeneration(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return g
		}
		g0 := read()
		nft(t, "list", "ruleset")
		if g := read(); g != g0 {
			t.Fatalf("generation %d after listing the ruleset, was %d", g, g0)
		}
		nft(t, "add", "table", "inet", "someone-else")
		g1 := read()
		if g1 == g0 {
			t.Fatalf("generation still %d after adding a table", g1)
		}
		nft(t, "add", "chain", "inet", "someone-else", "c")
		if g := read(); g == g1 {
			t.Fatalf("generation still %d after adding a chain", g)
		}
	})
}

// countingNft puts an nft first in PATH that records each invocation and
// runs the real one; calls returns how many there were. Set it before New,
// which looks nft up.
func countingNft(t *testing.T) (realNft string, calls func() int) {
	t.Helper()
	realNft = testenv.RequireBinary(t, "nft")
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	script := "#!/bin/sh\nprintf '%s\\n' \"$*\" >> " + log + "\nexec " + realNft + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "nft"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	return realNft, func() int {
		b, err := os.ReadFile(log)
		if errors.Is(err, os.ErrNotExist) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Count(b, []byte("\n"))
	}
}

// outside runs the real nft, as someone other than the agent.
func outside(t *testing.T, realNft string, args ...string) {
	t.Helper()
	if out, err := exec.Command(realNft, args...).CombinedOutput(); err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
}

// outsideChanges are edits made behind the agent's back: to its table
// (drift), and elsewhere in the namespace's ruleset (no drift).
var outsideChanges = []struct {
	name  string
	args  []string
	drift bool
}{
	{"flush our chain", []string{"flush", "chain", "inet", Table, "overlay"}, true},
	{"add a rule to our table", []string{"add", "rule", "inet", Table, "input", "counter"}, true},
	{"delete our table", []string{"delete", "table", "inet", Table}, true},
	{"add another table", []string{"add", "table", "inet", "someone-else"}, false},
	{"add an element to our set", []string{"add", "element", "inet", Table, "seg_web_v4", "{ 100.64.32.99 }"}, false},
}

// applied is a Firewall on the kernel of the current network namespace
// with the test state applied.
func applied(t *testing.T) (*Firewall, context.Context) {
	t.Helper()
	f, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := f.Apply(ctx, state()); err != nil {
		t.Fatal(err)
	}
	return f, ctx
}

// TestCheckListsOnlyAfterAChange: after Apply, Check execs no nft while
// nothing in the namespace changed; a change anywhere makes it list the
// table once, which finds drift in our table and none elsewhere (and then
// execs nothing again).
func TestCheckListsOnlyAfterAChange(t *testing.T) {
	testenv.RequireRoot(t)
	realNft, calls := countingNft(t)
	for _, c := range outsideChanges {
		t.Run(c.name, func(t *testing.T) {
			inNewNetns(t, func() {
				f, ctx := applied(t)
				n := calls()
				for range 3 {
					if err := f.Check(ctx); err != nil {
						t.Fatalf("fresh table: %v", err)
					}
				}
				if got := calls() - n; got != 0 {
					t.Fatalf("Check ran nft %d times with nothing changed since Apply, want 0", got)
				}
				outside(t, realNft, c.args...)
				n = calls()
				err := f.Check(ctx)
				if got := calls() - n; got != 1 {
					t.Errorf("Check ran nft %d times after an outside change, want 1 (one listing)", got)
				}
				if c.drift {
					if !errors.Is(err, ErrDrift) {
						t.Fatalf("after %s: Check = %v, want ErrDrift", c.name, err)
					}
					return
				}
				if err != nil {
					t.Fatalf("after %s: %v", c.name, err)
				}
				n = calls()
				if err := f.Check(ctx); err != nil {
					t.Fatal(err)
				}
				if got := calls() - n; got != 0 {
					t.Errorf("Check ran nft %d times after a checked change, want 0", got)
				}
			})
		})
	}
}

// TestCheckAfterApplySets: element updates move the generation on; the
// next Check lists once and finds no drift.
func TestCheckAfterApplySets(t *testing.T) {
	testenv.RequireRoot(t)
	_, calls := countingNft(t)
	inNewNetns(t, func() {
		f, ctx := applied(t)
		if err := f.ApplySets(ctx, map[string][]netip.Prefix{"seg_web": {netip.MustParsePrefix("100.64.32.77/32")}}, nil); err != nil {
			t.Fatal(err)
		}
		for i, want := range []int{1, 0} {
			n := calls()
			if err := f.Check(ctx); err != nil {
				t.Fatal(err)
			}
			if got := calls() - n; got != want {
				t.Errorf("Check %d after ApplySets ran nft %d times, want %d", i+1, got, want)
			}
		}
	})
}

// hooked runs fn once, right after the first ListRules or Run it passes on.
type hooked struct {
	knftables.Interface
	afterList, afterRun func()
}

func (h *hooked) ListRules(ctx context.Context, chain string) ([]*knftables.Rule, error) {
	r, err := h.Interface.ListRules(ctx, chain)
	if fn := h.afterList; fn != nil {
		h.afterList = nil
		fn()
	}
	return r, err
}

func (h *hooked) Run(ctx context.Context, tx *knftables.Transaction) error {
	err := h.Interface.Run(ctx, tx)
	if fn := h.afterRun; fn != nil {
		h.afterRun = nil
		fn()
	}
	return err
}

// TestGenerationReadBeforeListing: a change landing between Check's
// listing and the end of Check, or right after Apply's commit, is found by
// the next Check (the generation is read before listing; Apply keeps only
// the generation its own commit made).
func TestGenerationReadBeforeListing(t *testing.T) {
	testenv.RequireRoot(t)
	realNft := testenv.RequireBinary(t, "nft")
	flush := func() { outside(t, realNft, "flush", "chain", "inet", Table, "overlay") }
	inNewNetns(t, func() {
		f, err := New(nil)
		if err != nil {
			t.Fatal(err)
		}
		h := &hooked{Interface: f.nft}
		f.nft = h
		ctx := context.Background()

		h.afterRun = flush
		if err := f.Apply(ctx, state()); err != nil {
			t.Fatal(err)
		}
		if err := f.Check(ctx); !errors.Is(err, ErrDrift) {
			t.Fatalf("a flush right after Apply's commit: Check = %v, want ErrDrift", err)
		}

		if err := f.Apply(ctx, state()); err != nil {
			t.Fatal(err)
		}
		outside(t, realNft, "add", "table", "inet", "someone-else") // the next Check lists
		h.afterList = flush
		if err := f.Check(ctx); err != nil {
			t.Fatalf("the listing saw the table intact: %v", err)
		}
		if err := f.Check(ctx); !errors.Is(err, ErrDrift) {
			t.Fatalf("a flush right after Check's listing: Check = %v, want ErrDrift", err)
		}
	})
}

// TestCheckWithoutGeneration: where the generation cannot be read, every
// Check lists the table and finds drift; the failure is logged once, at
// debug.
func TestCheckWithoutGeneration(t *testing.T) {
	testenv.RequireRoot(t)
	realNft, calls := countingNft(t)
	inNewNetns(t, func() {
		var logs bytes.Buffer
		f, err := New(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
		if err != nil {
			t.Fatal(err)
		}
		f.generation = func(context.Context) (uint32, error) { return 0, errors.New("no generation here") }
		ctx := context.Background()
		if err := f.Apply(ctx, state()); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			n := calls()
			if err := f.Check(ctx); err != nil {
				t.Fatal(err)
			}
			if got := calls() - n; got != 1 {
				t.Errorf("Check without a generation ran nft %d times, want 1", got)
			}
		}
		outside(t, realNft, "flush", "chain", "inet", Table, "overlay")
		if err := f.Check(ctx); !errors.Is(err, ErrDrift) {
			t.Fatalf("flushed chain without a generation: Check = %v, want ErrDrift", err)
		}
		if n := strings.Count(logs.String(), "generation unreadable"); n != 1 || !strings.Contains(logs.String(), "level=DEBUG") {
			t.Errorf("want the failure logged once at debug, got:\n%s", logs.String())
		}
	})
}
