package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// hostLimits are the machine-wide limits the lab raises when they are
// lower (the kernel's defaults are for one host, not a hundred namespaces):
//
//   - fs.inotify.max_user_instances: every wireguard-go device holds an
//     inotify instance (its UAPI socket watch), and the default of 128 per
//     user is reached by a 10-region BIRD-mode lab, after which new devices
//     fail with "too many open files";
//   - net.ipv{4,6}.neigh.default.gc_thresh1..3: the neighbour (ARP, NDP)
//     table is one for all network namespaces, and its default hard limit
//     of 1,024 entries is reached by a 20-region lab (40 gateways on one
//     WAN, each resolving the other 39: 1,560 entries), after which the
//     kernel logs "neighbor table overflow!", sends fail with "No buffer
//     space available" and gateways no longer reach each other. Only the
//     host's own network namespace has these settings (scripts/isolated
//     raises them before it leaves it).
var hostLimits = []struct {
	path string
	min  int
	why  string
}{
	{"fs/inotify/max_user_instances", 8192, "one per wireguard-go device"},
	{"net/ipv4/neigh/default/gc_thresh1", 8192, "the neighbour table is shared by every namespace"},
	{"net/ipv4/neigh/default/gc_thresh2", 32768, "the neighbour table is shared by every namespace"},
	{"net/ipv4/neigh/default/gc_thresh3", 65536, "the neighbour table is shared by every namespace"},
	{"net/ipv6/neigh/default/gc_thresh1", 8192, "the neighbour table is shared by every namespace"},
	{"net/ipv6/neigh/default/gc_thresh2", 32768, "the neighbour table is shared by every namespace"},
	{"net/ipv6/neigh/default/gc_thresh3", 65536, "the neighbour table is shared by every namespace"},
}

// raiseHostLimits raises hostLimits under root (/proc/sys) where they are
// lower. A limit this namespace does not have is left alone: it is said
// once, since a large lab will run into it.
func (l *Lab) raiseHostLimits(root string) error {
	missing := 0
	for _, lim := range hostLimits {
		path := filepath.Join(root, lim.path)
		b, err := os.ReadFile(path)
		if err != nil {
			missing++
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n >= lim.min {
			continue
		}
		name := strings.ReplaceAll(lim.path, "/", ".")
		if err := os.WriteFile(path, []byte(strconv.Itoa(lim.min)), 0o644); err != nil {
			return fmt.Errorf("raising %s to %d (%s): %w", name, lim.min, lim.why, err)
		}
		l.progress("      raised %s to %d (%s)", name, lim.min, lim.why)
	}
	if missing > 0 {
		l.progress("      %d of the machine's limits (inotify, neighbour table) cannot be seen from this network namespace: a lab of more than 10 regions needs them raised in the host's (scripts/isolated does)", missing)
	}
	return nil
}
