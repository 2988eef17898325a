package agent

import (
	"context"
	"net/netip"

	"github.com/statemesh/statemesh/internal/dataplane/firewall"
	"github.com/statemesh/statemesh/internal/dataplane/wg"
	"github.com/statemesh/statemesh/internal/netmap"
)

// The agent drives the kernel through three small interfaces, so that the
// logic that turns frames into applied maps (onFrame, applyDelta, the
// restart from the saved map) is unit-tested with in-memory fakes
// (agent_apply_test.go), and the kernel parts with the real kernel (their
// own packages' tests and the lab).

// meshDevice is the node's mesh WireGuard device (wg.Device).
type meshDevice interface {
	// Apply makes the device match desired with a full diff; prev is the
	// map applied last (its endpoints tell which ones the controller
	// changed).
	Apply(ctx context.Context, desired, prev netmap.Map) (wg.Result, error)
	// ApplyDelta makes only the delta's operations; the device holds prev.
	ApplyDelta(ctx context.Context, prev, next netmap.Map, d netmap.Delta) (wg.Result, error)
	Status() ([]wg.PeerStatus, error)
	Mode() string
	Close() error
}

// nodeFirewall is the node's nftables table (firewall.Firewall).
type nodeFirewall interface {
	Apply(ctx context.Context, s firewall.State) error
	ApplySets(ctx context.Context, add, del map[string][]netip.Prefix) error
	Check(ctx context.Context) error
}

// openDevice opens the mesh device (wg.Open; tests give a fake).
type openDevice func(wg.Config) (meshDevice, error)

func openWG(c wg.Config) (meshDevice, error) {
	d, err := wg.Open(c)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return d, nil
}

var (
	_ meshDevice   = (*wg.Device)(nil)
	_ nodeFirewall = (*firewall.Firewall)(nil)
)
