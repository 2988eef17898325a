package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestControllerAttestationFlag: --controller-attestation takes a mesh
// spec with attestation.controller, and says what is wrong otherwise.
func TestControllerAttestationFlag(t *testing.T) {
	dir := t.TempDir()
	base, err := os.ReadFile("../../examples/small.yaml")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, extra string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, append(append([]byte{}, base...), extra...), 0o600)
		return p
	}
	ek := strings.Repeat("ab", 32)
	good := write("good.yaml", "attestation:\n  ekAllowList: ["+ek+"]\n  controller:\n    ekAllowList: ["+ek+"]\n    pcrs: [0, 7]\n")
	pol, err := controllerPolicyFrom(good)
	if err != nil || !pol.EKAllowList[ek] || len(pol.PCRs) != 2 {
		t.Fatalf("policy %+v, %v", pol, err)
	}
	for name, c := range map[string]struct{ path, want string }{
		"no controller section": {write("none.yaml", "attestation:\n  ekAllowList: ["+ek+"]\n"), "has no attestation.controller"},
		"invalid section":       {write("bad.yaml", "attestation:\n  ekAllowList: ["+ek+"]\n  controller:\n    ekAllowList: [nope]\n"), "attestation.controller.ekAllowList[0]"},
		"missing file":          {filepath.Join(dir, "absent.yaml"), "--controller-attestation"},
	} {
		if _, err := controllerPolicyFrom(c.path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", name, err, c.want)
		}
	}
}
