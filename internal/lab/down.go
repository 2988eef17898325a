package lab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Down removes everything the lab in dir created: its processes (including
// wireguard-go daemons, found by namespace), namespaces and root-namespace
// links, then its state file. It keeps going on errors and reports them.
//
// Killing the processes is not enough for the namespaces to go. The agents'
// TCP connections to the controller (over the management veths) are closed
// by the kernel when their processes die, and become orphan sockets that
// retransmit their FIN (and a TLS alert the controller had queued) for
// minutes once the other end is gone — and an orphan socket holds its
// network namespace. 'ip netns del' then only removes the name: the
// namespace, its mgmt0 and the root-side smlmN end of that veth live on,
// and the next 'lab up' fails with "File exists" on smlmN. So Down aborts
// the lab's TCP sockets (ss -K, the kernel's SOCK_DESTROY) in every
// namespace and on the management network in the root namespace, deletes
// the root-side veth ends itself, and waits until the kernel has freed
// the namespaces.
func Down(dir string, out io.Writer) error {
	st, err := LoadState(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range st.Procs {
		killWait(p.PID)
	}
	killWait(st.Controller.PID)
	// Namespaces in reverse order (pods before their nodes).
	ns := slices.Clone(st.Namespaces)
	slices.Reverse(ns)
	ids := nsIDs(ns)
	for _, n := range ns {
		if out, err := sh("ip", "netns", "pids", n); err == nil {
			for _, f := range strings.Fields(out) {
				if pid, err := strconv.Atoi(f); err == nil {
					killWait(pid)
				}
			}
		}
		abortSockets(n)
	}
	// The controller's ends, while the management bridge still routes.
	abortRootSockets()
	for _, n := range ns {
		if _, err := sh("ip", "netns", "del", n); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	for _, pid := range st.Holders {
		killWait(pid)
	}
	for _, l := range st.RootLinks {
		if _, err := sh("ip", "link", "del", l); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	// Root-side ends of a lab recorded before they were (older state
	// files): by name.
	deleteRootVeths()
	if left := waitNSFreed(ids, 10*time.Second); len(left) > 0 {
		errs = append(errs, fmt.Errorf("the kernel still holds %d of the lab's network namespaces (nsid %v) 10 s after they were deleted", len(left), left))
	}
	if len(errs) > 0 {
		return fmt.Errorf("lab down left things behind: %w", errors.Join(errs...))
	}
	if out != nil {
		fmt.Fprintf(out, "lab down: removed %d namespaces, %d processes\n", len(st.Namespaces), len(st.Procs)+1)
	}
	// Keep logs; remove state and per-host data.
	os.Remove(filepath.Join(dir, StateFile))
	os.RemoveAll(filepath.Join(dir, "hosts"))
	os.RemoveAll(filepath.Join(dir, "controller"))
	return nil
}

// ForceClean removes every namespace and root link a lab could have
// created (names starting with sml-, the smlmgmt0 bridge), whatever the
// state file says. For a lab whose state file was lost.
func ForceClean(out io.Writer) error {
	list, err := sh("ip", "netns", "list")
	if err != nil {
		return err
	}
	n := 0
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		if pids, err := sh("ip", "netns", "pids", f[0]); err == nil {
			for _, p := range strings.Fields(pids) {
				if pid, err := strconv.Atoi(p); err == nil {
					killWait(pid)
				}
			}
		}
		sh("ip", "netns", "del", f[0])
		n++
	}
	abortRootSockets()
	// Deleting a namespace frees its veths only when the kernel frees the
	// namespace; remove the root-side ends now so a new lab can reuse
	// their names.
	deleteRootVeths()
	sh("ip", "link", "del", mgmtBridge)
	if out != nil {
		fmt.Fprintf(out, "removed %d lab namespaces\n", n)
	}
	return nil
}

// mgmtNet is the lab's management network (the controller and every
// host's mgmt0).
const mgmtNet = "10.255.0.0/16"

// abortSockets destroys every TCP socket left in a namespace whose
// processes are gone: the orphans that would otherwise keep it alive.
func abortSockets(ns string) {
	sh("ip", "netns", "exec", ns, "ss", "-K", "-t", "-a")
}

// abortRootSockets destroys the root namespace's TCP sockets on the lab's
// management network (the controller's ends of the agents' connections),
// and only those.
func abortRootSockets() {
	sh("ss", "-K", "-t", "-a", "dst", mgmtNet)
	sh("ss", "-K", "-t", "-a", "src", mgmtNet)
}

// deleteRootVeths deletes the root-side ends of the management veths
// (smlmN), which takes their mgmt0 peers with them.
func deleteRootVeths() {
	links, err := sh("ip", "-o", "link", "show")
	if err != nil {
		return
	}
	for _, line := range strings.Split(links, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, "smlm") && name != mgmtBridge {
			sh("ip", "link", "del", name)
		}
	}
}

// nsIDs returns the ids the root namespace has for the given namespaces
// (those with a link to it): how they can still be seen once their names
// are gone.
func nsIDs(names []string) []string {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out, err := sh("ip", "netns", "list-id")
	if err != nil {
		return nil
	}
	var ids []string
	for _, line := range strings.Split(out, "\n") {
		// nsid 3 (iproute2 netns name: sml-eu-central-gw1)
		f := strings.Fields(strings.NewReplacer("(", " ", ")", " ").Replace(line))
		if len(f) >= 6 && f[0] == "nsid" && want[f[len(f)-1]] {
			ids = append(ids, f[1])
		}
	}
	return ids
}

// waitNSFreed waits until the root namespace has none of the ids left
// (the kernel frees namespaces asynchronously) and returns those it still
// has after the timeout.
func waitNSFreed(ids []string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		out, _ := sh("ip", "netns", "list-id")
		have := map[string]bool{}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "nsid" {
				have[f[1]] = true
			}
		}
		var left []string
		for _, id := range ids {
			if have[id] {
				left = append(left, id)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}
