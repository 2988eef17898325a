package fault_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/ctltest"
	"github.com/statemesh/statemesh/internal/store/bolt"
	"github.com/statemesh/statemesh/internal/testenv"
)

// mountTmpfs mounts a tmpfs of size under t.TempDir() and unmounts it when
// the test ends (after everything registered later has been cleaned up).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		if testenv.InCI() {
			t.Fatalf("mounting a tmpfs: %v: %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("unmounting %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file until the file system is full and returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for len(buf) > 0 {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			buf = buf[:len(buf)/2]
		}
	}
	return path
}

// TestDiskFullBolt: the embedded store on a 4 MiB tmpfs that fills up.
// Writes (enrollments, spec changes, token creation) fail with a clean
// 503 unavailable that names the full disk — never a crash or a 500 — and
// reads keep working; once space returns, writes succeed again without a
// restart; and the database then passes bbolt's consistency check and holds
// every acknowledged enrollment and nothing half-written.
func TestDiskFullBolt(t *testing.T) {
	dir := mountTmpfs(t, "4m")
	ctx := bounded(t, 2*time.Minute)
	st, err := bolt.Open(filepath.Join(dir, "data"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			st.Close()
		}
	})
	inst := ctltest.Start(t, ctltest.Options{Store: st, Spec: []byte(stormSpec)})
	tok := inst.Token(t, api.CreateTokenRequest{Cluster: "r1/c1", Uses: 4000})
	res := newStormResult()
	storm(ctx, []string{inst.URL}, tok, stormNodes(t, "before", 50), 8, res, nil)
	if acked, failed := res.count(); acked != 50 || failed != 0 {
		t.Fatalf("before the disk filled: %d acknowledged, %d failed", acked, failed)
	}

	filler := fill(t, dir)
	// Enroll until the store runs out of pages it already had.
	var fullErr error
	nodes := stormNodes(t, "full", 400)
	for i, n := range nodes {
		storm(ctx, []string{inst.URL}, tok, []stormNode{n}, 1, res, nil)
		res.mu.Lock()
		err, failed := res.refused[n.name]
		if ferr, ok := res.failed[n.name]; ok {
			err, failed = ferr, true
		}
		res.mu.Unlock()
		if failed {
			fullErr = err
			t.Logf("FIGURE disk full: %d more enrollments fitted in the store's free pages; the next failed with: %v", i, err)
			break
		}
	}
	if fullErr == nil {
		t.Fatalf("400 enrollments succeeded on a full disk: the test did not fill it")
	}
	if code(fullErr) != api.CodeUnavailable || !strings.Contains(fullErr.Error(), "disk space") {
		t.Errorf("UNCLEAN ERROR on a full disk: %v (want unavailable naming the disk space)", fullErr)
	}
	// Other writes fail cleanly too; reads work.
	for range 3 {
		if _, err := inst.Admin.CreateToken(ctx, api.CreateTokenRequest{Cluster: "r1/c1"}); err != nil && code(err) != api.CodeUnavailable {
			t.Errorf("UNCLEAN ERROR: token creation on a full disk: %v", err)
		}
	}
	bigger := strings.Replace(stormSpec, "maxNodes: 200", "maxNodes: 300", 1)
	if _, err := inst.Admin.ApplySpec(ctx, []byte(bigger)); err != nil && code(err) != api.CodeUnavailable {
		t.Errorf("UNCLEAN ERROR: spec apply on a full disk: %v", err)
	}
	if nodes, err := inst.Admin.Nodes(ctx, "", ""); err != nil {
		t.Errorf("reads fail on a full disk: %v", err)
	} else if res.mu.Lock(); len(nodes) < len(res.acked) {
		t.Errorf("LOST: the controller lists %d nodes on a full disk, %d were acknowledged", len(nodes), len(res.acked))
		res.mu.Unlock()
	} else {
		res.mu.Unlock()
	}

	// Space returns: writes succeed again, without a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	recovered := time.Now()
	res.mu.Lock()
	res.failed, res.refused = map[string]error{}, map[string]error{}
	res.mu.Unlock()
	storm(ctx, []string{inst.URL}, tok, stormNodes(t, "after", 50), 8, res, nil)
	res.mu.Lock()
	for name, err := range res.failed {
		t.Errorf("NO RECOVERY: enrollment of %s failed after space returned: %v", name, err)
	}
	for name, err := range res.refused {
		t.Errorf("NO RECOVERY: enrollment of %s refused after space returned: %v", name, err)
	}
	res.mu.Unlock()
	if _, err := inst.Admin.ApplySpec(ctx, []byte(bigger)); err != nil {
		t.Errorf("NO RECOVERY: spec apply after space returned: %v", err)
	}
	t.Logf("FIGURE space returned: 50 enrollments and a spec change succeeded in %s without a restart", time.Since(recovered).Round(time.Millisecond))

	// Stop everything, then check the file: bbolt's own consistency check,
	// and every record.
	inst.Cancel()
	time.Sleep(100 * time.Millisecond)
	st.Close()
	closed = true
	db, err := bbolt.Open(filepath.Join(dir, "data", bolt.FileName), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("CORRUPT: the database does not open after the disk was full: %v", err)
	}
	if err := db.View(func(tx *bbolt.Tx) error {
		var errs []string
		for err := range tx.Check() {
			errs = append(errs, err.Error())
		}
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "; "))
		}
		return nil
	}); err != nil {
		t.Errorf("CORRUPT: bbolt consistency check after the disk was full: %v", err)
	}
	db.Close()
	st2, err := bolt.Open(filepath.Join(dir, "data"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	kvs, rev, err := st2.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	res.mu.Lock()
	defer res.mu.Unlock()
	found := checkRecords(t, kvs, res.acked)
	checkRevisions(t, res.acked, rev)
	t.Logf("FIGURE after reopening: %d nodes, %d acknowledged, revision %d, consistency check clean", len(found), len(res.acked), rev)
}
