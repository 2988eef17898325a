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
)

// Down removes everything the lab in dir created: its processes (including
// wireguard-go daemons, found by namespace), namespaces and root-namespace
// links, then its state file. It keeps going on errors and reports them.
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
	for _, n := range ns {
		if out, err := sh("ip", "netns", "pids", n); err == nil {
			for _, f := range strings.Fields(out) {
				if pid, err := strconv.Atoi(f); err == nil {
					killWait(pid)
				}
			}
		}
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
	// Deleting a namespace frees its veths asynchronously; remove the
	// root-side ends now so a new lab can reuse their names.
	if links, err := sh("ip", "-o", "link", "show"); err == nil {
		for _, line := range strings.Split(links, "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if strings.HasPrefix(name, "smlm") {
				sh("ip", "link", "del", name)
			}
		}
	}
	sh("ip", "link", "del", mgmtBridge)
	if out != nil {
		fmt.Fprintf(out, "removed %d lab namespaces\n", n)
	}
	return nil
}
