package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(binary, append(append([]string{"lab"}, args...), "--dir", dir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("statemesh lab %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Cleanup(func() { exec.Command(binary, "lab", "down", "--dir", dir).Run() })
	for round := 1; round <= 2; round++ {
		run("up", "--bgp")
		run("check")
		if round == 1 {
			checkRenderFirewall(t, dir)
			// --from: the client's row only (8 nodes and their pods).
			if out := run("check", "--from", "client laptop1"); !strings.Contains(out, "16 IPv4 probes") || strings.Contains(out, "node↔node") {
				t.Errorf("lab check --from 'client laptop1':\n%s", out)
			}
		}
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

// counters are what differs between a loaded ruleset and a used one.
var counters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// checkRenderFirewall: statemesh render firewall, from the controller
// (--node, with nft -c) and offline from the saved map (--map), is the
// ruleset the node's agent loaded: the script, loaded with nft -f into a
// fresh namespace, lists the same as the node's own table (counters
// aside), for a node and a BIRD-mode gateway.
func checkRenderFirewall(t *testing.T, dir string) {
	t.Helper()
	st, err := lab.LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	var allow []string
	for _, p := range st.Config.UnderlayAllow {
		allow = append(allow, "--underlay-allow", p)
	}
	for _, host := range []string{"eu-central-c1-n1", "eu-central-gw1"} {
		fromController, err := exec.Command(binary, append([]string{"render", "firewall", "--node", host, "--check", "--config", st.AdminConfig}, allow...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("render firewall --node %s: %v\n%s", host, err, fromController)
		}
		saved := filepath.Join(dir, "hosts", host, "map.json")
		offline, err := exec.Command(binary, append([]string{"render", "firewall", "--map", saved}, allow...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("render firewall --map %s: %v\n%s", saved, err, offline)
		}
		// The same ruleset; the header names the map's revision, which is
		// the agent's stream position in map.json.
		if body(offline) != body(fromController) {
			t.Errorf("%s: --map and --node differ:\n%s\n---\n%s", host, offline, fromController)
		}
		script := filepath.Join(t.TempDir(), "fw.nft")
		if err := os.WriteFile(script, fromController, 0o644); err != nil {
			t.Fatal(err)
		}
		const ns = "smfwcheck"
		exec.Command("ip", "netns", "del", ns).Run()
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		loaded, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "nft -f "+script+" && nft list table inet statemesh").CombinedOutput()
		exec.Command("ip", "netns", "del", ns).Run()
		if err != nil {
			t.Fatalf("%s: nft -f the rendered ruleset: %v\n%s", host, err, loaded)
		}
		agent, err := exec.Command(binary, "lab", "exec", host, "--dir", dir, "--", "nft", "list", "table", "inet", "statemesh").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: nft list on the node: %v\n%s", host, err, agent)
		}
		want, got := counters.ReplaceAllString(string(agent), "counter"), counters.ReplaceAllString(string(loaded), "counter")
		if want != got {
			t.Errorf("%s: the rendered ruleset differs from the agent's table:\n--- agent\n%s\n--- rendered\n%s", host, want, got)
		}
	}
}

// body drops the header comment (it names the map's revision).
func body(script []byte) string {
	_, rest, _ := strings.Cut(string(script), "\n# Load by hand")
	return rest
}
