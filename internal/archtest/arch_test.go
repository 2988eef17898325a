// Package archtest keeps the architecture honest: the pure core imports no
// kernel, store, network or process package (STYLE.md rule 1).
package archtest

import (
	"os/exec"
	"strings"
	"testing"
)

// pure lists the packages that must stay free of effects.
var pure = []string{
	"github.com/statemesh/statemesh/internal/spec",
	"github.com/statemesh/statemesh/internal/plan",
	"github.com/statemesh/statemesh/internal/mtu",
	"github.com/statemesh/statemesh/internal/netmap",
	"github.com/statemesh/statemesh/internal/topology",
	"github.com/statemesh/statemesh/internal/policy",
	"github.com/statemesh/statemesh/internal/cilium",
}

// forbidden are import path prefixes the pure core must not reach, even
// indirectly.
var forbidden = []string{
	"os/exec",
	"net/http",
	"github.com/vishvananda/",
	"golang.zx2c4.com/wireguard",
	"github.com/google/nftables",
	"go.etcd.io/",
	"github.com/google/go-tpm",
}

func TestPureCoreImports(t *testing.T) {
	for _, pkg := range pure {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s depends on %s; the pure core must not (move the effect to an edge package)", pkg, dep)
				}
			}
		}
	}
}
