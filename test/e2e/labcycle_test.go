package e2e

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/lab"
	"github.com/statemesh/statemesh/internal/testenv"
)

// labNSIDs returns the ids the root namespace has for the lab's
// namespaces (those with a link to it: the hosts').
func labNSIDs(t *testing.T) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	out, _ := exec.Command("ip", "netns", "list-id").CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "nsid" && strings.Contains(line, "name: sml-") {
			ids[f[1]] = true
		}
	}
	return ids
}

// labLeftovers lists what the lab left: links named sml* (the management
// bridge, the hosts' smlmN veth ends), sml- namespace names, and the
// namespaces of ids (taken while the lab was up) that the kernel still
// has — a namespace whose name is gone but that something (an orphan TCP
// socket) still holds.
func labLeftovers(t *testing.T, ids map[string]bool) []string {
	t.Helper()
	var left []string
	links, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v: %s", err, links)
	}
	for _, line := range strings.Split(string(links), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], "sml") {
			left = append(left, "link "+strings.TrimSuffix(f[1], ":"))
		}
	}
	out, _ := exec.Command("ip", "netns", "list-id").CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "nsid" && ids[f[1]] {
			left = append(left, "namespace still held: "+line)
		}
	}
	names, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	for _, line := range strings.Split(string(names), "\n") {
		if strings.HasPrefix(line, "sml-") {
			left = append(left, "netns "+line)
		}
	}
	return left
}

// TestLabDownThenUpAtOnce (issue 18 item 6) runs the README's sequence
// with the binary: lab up --bgp, lab down, and at once lab up --bgp and
// lab check. Before the fix 'lab down' left the hosts' namespaces held by
// orphan TCP sockets (the agents' connections to the controller), with
// their smlmN veth ends in the root namespace, and the second 'lab up'
// failed: "ip link add name mgmt0 ... peer name smlm0: File exists".
// lab down must leave nothing: no sml* link, no namespace the kernel still
// holds.
func TestLabDownThenUpAtOnce(t *testing.T) {
	testenv.RequireRoot(t)
	if err := lab.CheckPrerequisites(); err != nil {
		if testenv.InCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	testenv.RequireBinary(t, "bird")
	lab.ForceClean(nil)
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(binary, append(append([]string{"lab"}, args...), "--dir", dir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("statemesh lab %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() { exec.Command(binary, "lab", "down", "--dir", dir).Run() })
	for round := 1; round <= 2; round++ {
		run("up", "--bgp")
		run("check")
		ids := labNSIDs(t)
		if len(ids) == 0 {
			t.Fatal("the root namespace has no id for the lab's namespaces: nothing to check")
		}
		run("down")
		if left := labLeftovers(t, ids); len(left) > 0 {
			t.Fatalf("round %d: lab down left %v", round, left)
		}
	}
}
