package attest

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/statemesh/statemesh/internal/swtpm"
	"github.com/statemesh/statemesh/internal/testenv"
	"github.com/statemesh/statemesh/internal/tpm"
)

// TestSWTPM attests Debian's swtpm, provisioned with an EK certificate from
// a local CA: accepted with that CA as root, refused with another.
func TestSWTPM(t *testing.T) {
	tp, ca := provisionedSWTPM(t)
	rw, err := tpm.Open(tp.URL)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAttester(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	id, err := a.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if len(id.EKCert) == 0 {
		t.Fatal("swtpm has no EK certificate in NV")
	}
	roots, inter, err := ca.Pools()
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{Roots: roots, Intermediates: inter, PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7}}
	if err := attest(p, a, id, nil); err != nil {
		t.Fatalf("swtpm with its CA as root: %v", err)
	}
	other := newCA(t, "not the swtpm CA")
	p.Roots = other.pool()
	if err := attest(p, a, id, nil); !errors.Is(err, ErrEKUntrusted) {
		t.Fatalf("swtpm with another root: %v", err)
	}
}

// TestDeviceSurvivesKilledUsers: a process killed while it used the TPM
// (an agent or controller killed mid-attestation) leaves its keys loaded
// in a software TPM, which has no resource manager; after a few the TPM
// has no room for another key. Opening the TPM flushes what dead users
// left, so the next attestation works.
func TestDeviceSurvivesKilledUsers(t *testing.T) {
	tp, _ := provisionedSWTPM(t)
	// Ten users that die holding their EK and AK (never flushed).
	for range 10 {
		rw, err := tpm.Open(tp.URL)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := NewAttester(rw); err != nil {
			t.Fatalf("a user after killed ones: %v", err)
		}
		rw.Close()
	}
	d := Device{URL: tp.URL}
	if _, err := d.Identity(); err != nil {
		t.Fatalf("the TPM after killed users: %v", err)
	}
}

// provisionedSWTPM runs Debian's swtpm with an EK certificate from a CA
// of its own, until the test ends.
func provisionedSWTPM(t *testing.T) (*swtpm.TPM, *swtpm.CA) {
	t.Helper()
	testenv.RequireBinary(t, "swtpm")
	testenv.RequireBinary(t, "swtpm_setup")
	dir := t.TempDir()
	ca, err := swtpm.NewCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	tp, err := ca.StartNew(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tp.Stop)
	return tp, ca
}
