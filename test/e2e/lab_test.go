// Package e2e runs StateMesh end to end in the lab: real controller and
// agent processes, real WireGuard (kernel or wireguard-go), real packets in
// network namespaces. It needs root; under CI (STATEMESH_CI=1) it fails
// rather than skips without it.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/dashboard/browser"
	"github.com/statemesh/statemesh/internal/lab"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/testenv"
)

var binary string

// The main goroutine keeps the main thread to itself: the tests enter lab
// namespaces on locked threads that end with their goroutines, and Go
// parks, rather than ends, a main thread whose locked goroutine ended; the
// process then belonged to a lab namespace, 'ip netns pids' listed it,
// and lab down killed the test binary (CI: "signal: killed" after
// TestLabEBPF's flood).
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "statemesh-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "statemesh")
	out, err := exec.Command("go", "build", "-o", binary, "../../cmd/statemesh").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building statemesh: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type logw struct{ t *testing.T }

func (w logw) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// upLab starts the 2 regions × 2 clusters × 2 nodes lab with 2 gateways
// per region and tears it down when the test ends.
func upLab(t *testing.T) *lab.Lab {
	testenv.RequireRoot(t)
	if err := lab.CheckPrerequisites(); err != nil {
		if testenv.InCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	lab.ForceClean(nil)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, lab.Config{Dir: dir, Binary: binary, Pods: true, GatewayTimeout: 1500 * time.Millisecond,
		Attestation: true, WeakNodes: 1, ReattestInterval: 5 * time.Second, Policy: true, Clients: 1}, logw{t})
	t.Cleanup(func() {
		// STATEMESH_E2E_LOGS=DIR keeps every log of the lab there.
		if keep := os.Getenv("STATEMESH_E2E_LOGS"); keep != "" {
			if out, err := exec.Command("sh", "-c", `mkdir -p "$2" && cd "$1" && find . -name '*.log' | cpio -pdm "$2" 2>/dev/null || cp -r "$1"/. "$2"`, "sh", dir, keep).CombinedOutput(); err != nil {
				t.Logf("keeping logs: %v: %s", err, out)
			}
		}
		if t.Failed() {
			for _, f := range []string{"controller.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("--- %s (tail)\n%s", f, tail(string(b), 40))
			}
		}
		if err := lab.Down(dir, nil); err != nil {
			t.Errorf("lab down: %v", err)
		}
		lab.ForceClean(nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// probeCounts counts a matrix's probes by "FAMILY KIND VERDICT" (kind:
// node, pod or client; verdict: what the policy expects, allowed or denied).
func probeCounts(m *lab.Matrix) map[string]int {
	count := map[string]int{}
	for _, r := range m.Results {
		kind := "node"
		switch {
		case strings.HasPrefix(r.From, "client "):
			kind = "client"
		case strings.Contains(r.From, "/pod"):
			kind = "pod"
		}
		verdict := "denied"
		if e := m.Expected[[2]string{r.From, r.To}]; e.ICMP || e.TCP {
			verdict = "allowed"
		}
		count[m.Family(r.From)+" "+kind+" "+verdict]++
	}
	return count
}

func check(t *testing.T, l *lab.Lab) *lab.Matrix {
	t.Helper()
	var m *lab.Matrix
	var err error
	// A change just made may still be on its way to the last nodes.
	for attempt := 0; attempt < 5; attempt++ {
		m, err = l.Check(context.Background(), lab.CheckOptions{Timeout: 2 * time.Second})
		if err == nil && m.Failures() == 0 {
			return m
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	m.Print(&b)
	t.Fatalf("%d of %d probes differ from the policy:\n%s", m.Failures(), len(m.Results), b.String())
	return m
}

func hostOut(t *testing.T, l *lab.Lab, host string, argv ...string) string {
	t.Helper()
	cmd, err := l.State.HostCmd(context.Background(), host, argv...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v on %s: %v\n%s", argv, host, err, out)
	}
	return string(out)
}

// controllerPeers returns the public keys of a host's peers per the
// controller's map of it.
func controllerPeers(t *testing.T, l *lab.Lab, host string) []string {
	t.Helper()
	m, err := l.Admin.NodeMap(context.Background(), host)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, p := range m.Peers {
		keys = append(keys, p.PublicKey.String())
	}
	slices.Sort(keys)
	return keys
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

func host(t *testing.T, l *lab.Lab, name string) *lab.Host {
	h, ok := l.State.Host(name)
	if !ok {
		t.Fatalf("no host %s", name)
	}
	return h
}

func TestLab(t *testing.T) {
	l := upLab(t)
	ctx := context.Background()

	t.Run("MeasuredMatrixEqualsPolicy", func(t *testing.T) {
		m := check(t, l)
		allowed, denied := 0, 0
		for _, e := range m.Expected {
			if e.TCP {
				allowed++
			} else {
				denied++
			}
		}
		if allowed == 0 || denied == 0 {
			t.Fatalf("the lab policy allows %d and denies %d pairs: the check would prove nothing", allowed, denied)
		}
	})

	t.Run("NftRulesetIsOursAndCommented", func(t *testing.T) {
		out := hostOut(t, l, "eu-central-c2-n1", "nft", "list", "ruleset")
		if strings.Count(out, "table ") != 1 || !strings.Contains(out, "table inet statemesh") {
			t.Fatalf("the ruleset holds other tables or not ours:\n%s", out)
		}
		for _, want := range []string{`comment "rule backend-to-vault: backend -> vault"`, `comment "default deny between segments"`,
			`comment "underlay: WireGuard from known peers"`, "seg_backend_strong_v4"} {
			if !strings.Contains(out, want) {
				t.Errorf("ruleset lacks %q", want)
			}
		}
	})

	t.Run("FlushedTableIsRestored", func(t *testing.T) {
		h := "us-east-c2-n1"
		before := hostOut(t, l, h, "nft", "list", "chain", "inet", "statemesh", "overlay")
		hostOut(t, l, h, "nft", "flush", "table", "inet", "statemesh")
		took := waitFor(t, "flushed table restored", 15*time.Second, func() bool {
			cmd, _ := l.State.HostCmd(ctx, h, "nft", "list", "chain", "inet", "statemesh", "overlay")
			out, err := cmd.Output()
			return err == nil && strings.Count(string(out), "comment") == strings.Count(before, "comment")
		})
		t.Logf("flushed StateMesh's table on %s: restored by the agent in %s", h, took.Round(time.Millisecond))
		check(t, l)
	})

	client := "client laptop1"
	t.Run("ClientReachesWhatThePolicyAllows", func(t *testing.T) {
		// The client came up with stock wg-quick from the file statemesh
		// client add wrote; the check's matrix holds its row.
		m := check(t, l)
		reached, denied := 0, 0
		for _, r := range m.Results {
			if r.From != client {
				continue
			}
			if r.TCP {
				reached++
			} else {
				denied++
			}
		}
		if reached == 0 || denied == 0 {
			t.Fatalf("the client reached %d and was denied %d targets: the policy lets it reach the frontend only", reached, denied)
		}
		t.Logf("client (wg-quick): reached %d endpoints, denied %d, as the policy says", reached, denied)
	})

	t.Run("ClientStaysThroughGatewayHealthChange", func(t *testing.T) {
		// The client's file names its clients gateway. The gateway's agent
		// stops (its WireGuard keeps forwarding): the gateway is unhealthy
		// and its clusters move, but the clients gateway is pinned, so the
		// client still reaches what the policy allows. Before the pin the
		// client's peer and the clients range moved to the other gateway,
		// which the client's file does not name: every probe failed.
		cls, err := l.Admin.Clients(ctx)
		if err != nil || len(cls) == 0 {
			t.Fatalf("clients: %v %v", cls, err)
		}
		gw := cls[0].Gateway
		healthy := func(want bool) func() bool {
			return func() bool {
				regions, err := l.Admin.Regions(ctx)
				if err != nil {
					return false
				}
				for _, r := range regions {
					for _, g := range r.Gateways {
						if g.Name == gw {
							return g.Healthy == want
						}
					}
				}
				return false
			}
		}
		if err := l.KillAgent(gw); err != nil {
			t.Fatal(err)
		}
		restarted := false
		defer func() {
			if !restarted {
				l.StartAgent(gw)
			}
		}()
		waitFor(t, gw+" unhealthy", 15*time.Second, healthy(false))
		m, err := l.Check(ctx, lab.CheckOptions{Timeout: 2 * time.Second, From: []string{client}})
		if err != nil {
			t.Fatal(err)
		}
		if m.Failures() > 0 {
			var b strings.Builder
			m.Print(&b)
			t.Errorf("with %s unhealthy the client's probes differ from the policy:\n%s", gw, b.String())
		}
		if cls, _ = l.Admin.Clients(ctx); len(cls) == 0 || cls[0].Gateway != gw {
			t.Fatalf("the clients moved off %s when it went unhealthy: %+v", gw, cls)
		}
		t.Logf("%s unhealthy (agent stopped): the client still reaches what the policy allows (%d probes)", gw, len(m.Results))
		if err := l.StartAgent(gw); err != nil {
			t.Fatal(err)
		}
		restarted = true
		waitFor(t, gw+" healthy again", 30*time.Second, healthy(true))
	})

	t.Run("PolicyChangeReachesEveryNode", func(t *testing.T) {
		specText, err := l.Admin.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		changed := strings.Replace(specText, "    - {name: backend-to-vault,", "    - {name: frontend-to-vault, from: frontend, to: vault, ports: [\"tcp/7000\"]}\n    - {name: backend-to-vault,", 1)
		if _, err := l.Admin.ApplySpec(ctx, []byte(changed)); err != nil {
			t.Fatal(err)
		}
		vaults := []string{"eu-central-c2-n1", "us-east-c2-n1"}
		took := waitFor(t, "new rule on every vault node", 30*time.Second, func() bool {
			for _, h := range vaults {
				cmd, _ := l.State.HostCmd(ctx, h, "nft", "list", "chain", "inet", "statemesh", "overlay")
				out, err := cmd.Output()
				if err != nil || !strings.Contains(string(out), "frontend-to-vault") {
					return false
				}
			}
			return true
		})
		t.Logf("policy change (a new rule) enforced on every node it concerns %s after apply", took.Round(time.Millisecond))
		check(t, l) // the matrix now follows the new policy
		if _, err := l.Admin.ApplySpec(ctx, []byte(specText)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "rule gone again", 30*time.Second, func() bool {
			cmd, _ := l.State.HostCmd(ctx, vaults[0], "nft", "list", "chain", "inet", "statemesh", "overlay")
			out, err := cmd.Output()
			return err == nil && !strings.Contains(string(out), "frontend-to-vault")
		})
		check(t, l)
	})

	t.Run("ClientRevoked", func(t *testing.T) {
		start := time.Now()
		if err := l.RemoveClient(ctx, "laptop1"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "revoked client cut off", 15*time.Second, func() bool {
			m, err := l.Check(ctx, lab.CheckOptions{Timeout: time.Second, From: []string{client}})
			if err != nil {
				return false
			}
			for _, r := range m.Results {
				if r.ICMP || r.TCP {
					return false
				}
			}
			return len(m.Results) > 0
		})
		t.Logf("client removed: it reaches nothing %s after statemesh client remove started (probes time out after 1s)", time.Since(start).Round(time.Millisecond))
		gw := hostOut(t, l, "eu-central-gw1", "wg", "show", "sm0") + hostOut(t, l, "eu-central-gw2", "wg", "show", "sm0")
		if strings.Contains(gw, "100.64.16.1/32") {
			t.Errorf("a gateway still has the revoked client as a peer:\n%s", gw)
		}
	})

	t.Run("ClassesFromAttestation", func(t *testing.T) {
		nodes, err := l.Admin.Nodes(ctx, "", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			h := host(t, l, n.Name)
			want := "strong"
			if h.Weak {
				want = "weak"
			}
			if n.Class != want {
				t.Errorf("%s (swtpm: %v) is %s, want %s", n.Name, h.TPM != "", n.Class, want)
			}
		}
	})

	t.Run("NodeLabelsForKubernetes", func(t *testing.T) {
		out, err := exec.Command(binary, "get", "nodes", "-o", "labels", "--config", l.State.AdminConfig).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		weak := 0
		for _, line := range lines {
			if !strings.HasPrefix(line, "kubectl --context ") || !strings.Contains(line, "statemesh.dev/class=") {
				t.Fatalf("not a kubectl label command: %q", line)
			}
			if strings.Contains(line, "statemesh.dev/class=weak") {
				weak++
			}
		}
		if len(lines) != 8 || weak != 4 {
			t.Errorf("%d commands (want one per node, 8), %d weak (want 4):\n%s", len(lines), weak, out)
		}
	})

	t.Run("MetricsEndpoints", func(t *testing.T) {
		resp, err := http.Get("http://" + lab.ControllerIP + ":9464/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("controller metrics: %s\n%s", resp.Status, body)
		}
		ctl := parseMetrics(string(body))
		if got := ctl.sum("statemesh_nodes", ""); got != 12 {
			t.Errorf("statemesh_nodes sums to %v, want 12 (8 nodes, 4 gateways):\n%s", got, ctl.grep("statemesh_"))
		}
		if got := ctl.sum("statemesh_nodes", `class="weak"`); got < 3 {
			t.Errorf("weak nodes: %v", got)
		}
		if got := ctl.sum("statemesh_gateway_healthy", ""); got != 4 {
			t.Errorf("healthy gateways: %v, want 4", got)
		}
		if got := ctl.sum("statemesh_gateway_designated_clusters", ""); got != 4 {
			t.Errorf("designated clusters: %v, want 4", got)
		}
		if ctl.sum("statemesh_enrollments_total", `result="ok"`) < 12 || ctl.sum("statemesh_attestations_total", `verdict="accepted"`) < 8 {
			t.Errorf("enrollment/attestation counters:\n%s", ctl.grep("statemesh_enrollments_total", "statemesh_attestations_total"))
		}
		if ctl.sum("statemesh_watch_streams", "") != 12 || ctl.sum("statemesh_fanout_delay_seconds_count", "") == 0 {
			t.Errorf("streams/fan-out:\n%s", ctl.grep("statemesh_watch_streams", "statemesh_fanout_delay_seconds_count"))
		}
		ag := parseMetrics(hostOut(t, l, "eu-central-c1-n2", "curl", "-sf", "http://127.0.0.1:9465/metrics"))
		if ag.sum("statemesh_agent_peers", "") < 3 || ag.sum("statemesh_agent_firewall_enforced", "") != 1 || ag.sum("statemesh_agent_map_healthy", "") != 1 ||
			ag.sum("statemesh_agent_handshake_age_seconds_count", "") < 3 || ag.sum("statemesh_agent_receive_bytes_total", "") == 0 || ag.sum("statemesh_agent_interface_mtu", "") != 1440 {
			t.Errorf("agent metrics:\n%s", ag.grep("statemesh_agent_"))
		}
	})

	t.Run("PathProbesAndDoctorFindLoweredWANMTU", func(t *testing.T) {
		// Every host probes its gateways (gateways: each other) every 3 s.
		waitFor(t, "every host reporting paths at the planned MTU", 30*time.Second, func() bool {
			ps, err := l.Admin.Paths(ctx)
			from := map[string]bool{}
			for _, p := range ps {
				if p.Loss >= 1 || p.PathMTU != p.PlannedMTU {
					return false
				}
				from[p.From] = true
			}
			return err == nil && len(from) == len(l.State.Hosts)
		})
		st, err := l.Admin.Status(ctx)
		if err != nil || len(st.Latency) != 4 {
			t.Fatalf("latency matrix, want 2×2 cells: %+v %v", st.Latency, err)
		}
		ag := parseMetrics(hostOut(t, l, "eu-central-c1-n2", "curl", "-sf", "http://127.0.0.1:9465/metrics"))
		if ag.sum("statemesh_agent_path_mtu_bytes", `region="eu-central"`) != 1440 || ag.sum("statemesh_agent_path_loss_ratio", `region="eu-central"`) != 0 {
			t.Errorf("agent path metrics:\n%s", ag.grep("statemesh_agent_path_"))
		}
		doctor := func() (string, []doctorFinding) {
			out, _ := exec.Command(binary, "doctor", "--config", l.State.AdminConfig).CombinedOutput()
			js, _ := exec.Command(binary, "doctor", "-o", "json", "--config", l.State.AdminConfig).Output()
			var fs []doctorFinding
			if err := json.Unmarshal(js, &fs); err != nil {
				t.Fatalf("doctor -o json: %v\n%s\n%s", err, js, out)
			}
			return string(out), fs
		}
		if out, fs := doctor(); hasCheck(fs, "path-mtu") {
			t.Fatalf("doctor finds a path MTU problem before the link changed:\n%s", out)
		}
		gw := "eu-central-gw1"
		if err := l.WANLink(gw, 1400, true); err != nil {
			t.Fatal(err)
		}
		defer l.WANLink(gw, l.State.Config.WANMTU, true)
		var out string
		var found *doctorFinding
		took := waitFor(t, "doctor finding the 1400-byte WAN link", 40*time.Second, func() bool {
			var fs []doctorFinding
			out, fs = doctor()
			// Once both other-region gateways' probes are in, the finding
			// names the gateway every low path goes through.
			for _, f := range fs {
				if f.Check == "path-mtu" && strings.Contains(f.Subject, gw) {
					found = &f
					return true
				}
			}
			return false
		})
		t.Logf("doctor found it after %s:\n%s", took.Round(time.Millisecond), out)
		// WireGuard pads to 16 bytes: the largest inner packet whose outer
		// packet fits 1400 is 1328 (1328 + 60), so the safe setting is 1388.
		if found.Severity != "error" || !strings.Contains(found.Subject, "WAN") || !strings.Contains(found.Subject, gw) ||
			!strings.Contains(found.Fix, "underlay.wan.mtu: 1388") || !strings.Contains(found.Fix, "1388–1403 bytes") || !strings.Contains(found.Evidence, "1328 bytes crossed") {
			t.Errorf("finding does not name the WAN link of %s, its MTU and the fix: %+v", gw, *found)
		}
		if st, _ := l.Admin.Status(ctx); !slices.ContainsFunc(st.Latency, func(c api.RegionLatency) bool { return c.MinPathMTU == 1328 }) {
			t.Errorf("latency matrix does not show the 1328-byte path: %+v", st.Latency)
		}
		if err := l.WANLink(gw, l.State.Config.WANMTU, true); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "doctor clear after the link is repaired", 40*time.Second, func() bool {
			_, fs := doctor()
			return !hasCheck(fs, "path-mtu")
		})
	})

	t.Run("DashboardShowsTheLab", func(t *testing.T) {
		bin, err := browser.Find()
		if err != nil {
			if testenv.InCI() {
				t.Fatal(err)
			}
			t.Skip(err)
		}
		// The operator's way: statemesh dashboard serves the page and
		// proxies read-only admin calls.
		cmd := exec.Command(binary, "dashboard", "--listen", "127.0.0.1:0", "--config", l.State.AdminConfig)
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		line, err := bufio.NewReader(stdout).ReadString('\n')
		var url string // "dashboard on http://127.0.0.1:PORT/ (read-only; ...)"
		if f := strings.Fields(line); len(f) > 2 {
			url = f[2]
		}
		if err != nil || !strings.HasPrefix(url, "http://127.0.0.1:") {
			t.Fatalf("statemesh dashboard said %q (%v)", line, err)
		}
		dom, err := browser.DOM(ctx, bin, url+"#node=eu-central-gw1", browser.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []string{"eu-central", "us-east"} {
			if !strings.Contains(dom, `data-region="`+r+`"`) {
				t.Errorf("region %s missing", r)
			}
		}
		for _, h := range l.State.Hosts {
			want := `data-node-label="` + h.Name + `"`
			if h.Role == "gateway" {
				want = `class="gw healthy" data-gateway="` + h.Name + `"`
			}
			if !strings.Contains(dom, want) {
				t.Errorf("%s %s missing (want %s)", h.Role, h.Name, want)
			}
		}
		for _, want := range []string{`data-link="`, "TPM quote verified", "probed gateway", "WireGuard peers ("} {
			if !strings.Contains(dom, want) {
				t.Errorf("the page lacks %q", want)
			}
		}
		if t.Failed() {
			t.Logf("DOM:\n%s", dom)
		}
		dir := os.Getenv("STATEMESH_ARTIFACTS")
		if dir == "" {
			dir = t.TempDir()
		}
		shot := filepath.Join(dir, "dashboard-lab.png")
		if err := browser.Screenshot(ctx, bin, url+"#node=eu-central-gw1", shot, browser.Options{Width: 1600, Height: 1100}); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot of the lab's dashboard: %s", shot)
	})

	t.Run("PartitionHealsByItself", func(t *testing.T) {
		// Baseline mode: the controller's designated gateways.
		partitionHeals(t, l)
	})

	t.Run("WGShowMatchesControllerMap", func(t *testing.T) {
		for _, h := range l.State.Hosts {
			want := controllerPeers(t, l, h.Name)
			got, err := l.WGPeers(ctx, h.Name)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(want, got) {
				t.Errorf("%s: wg show lists %d peers, the controller's map %d:\nwg:  %v\nmap: %v", h.Name, len(got), len(want), got, want)
			}
		}
	})

	t.Run("WANCutFailsOverWithoutBIRD", func(t *testing.T) {
		// Baseline mode: a designated gateway whose WAN link is cut still
		// heartbeats over the management network; it reaches no other
		// region's gateway while its region peer does, so its clusters
		// move (issue 20). A lossy link (a quarter of its frames dropped
		// each way) moves nothing.
		designated := func() string {
			regions, err := l.Admin.Regions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return regions[0].Designation["c1"]
		}
		v := designated()
		if err := l.WANLoss(v, 25); err != nil {
			t.Fatal(err)
		}
		lossyUntil := time.Now().Add(10 * time.Second)
		for time.Now().Before(lossyUntil) {
			time.Sleep(100 * time.Millisecond)
			if now := designated(); now != v {
				l.WANLoss(v, 0)
				t.Fatalf("a WAN link losing 25%% of its frames moved eu-central/c1 from %s to %s (flapping)", v, now)
			}
		}
		if err := l.WANLoss(v, 0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		var fwds []float64
		for i := range 3 {
			v := designated()
			f, b, recovered := outage(t, l, func() { l.WANLink(v, 0, false) }, 10*time.Second,
				func() { l.WANLink(v, l.State.Config.WANMTU, true) })
			if !recovered {
				t.Fatalf("cut %d: traffic did not move off %s within 10 s", i+1, v)
			}
			worst := max(f, b)
			fwds = append(fwds, worst.Seconds())
			t.Logf("cut %d: WAN of %s cut: outage %s forward, %s back", i+1, v, f.Round(time.Millisecond), b.Round(time.Millisecond))
			// Back in service before the next cut (its clusters return).
			waitFor(t, "the gateway back in service", 20*time.Second, func() bool { return designated() == v })
			time.Sleep(2 * time.Second)
		}
		slices.Sort(fwds)
		t.Logf("FIGURE baseline WAN cut: median outage %.2f s (of %v)", fwds[1], fwds)
		if fwds[1] > 3 {
			t.Errorf("median outage for a WAN cut without BIRD %.2f s, want ≤ 3 s", fwds[1])
		}
	})

	t.Run("GatewayFailover", func(t *testing.T) {
		src, dst := host(t, l, "eu-central-c1-n1"), host(t, l, "us-east-c1-n1")
		regions, err := l.Admin.Regions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		victim := regions[0].Designation["c1"]
		fwd, err := l.Stream(ctx, src.Name, true, dst.PodIP, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer fwd.Stop()
		back, err := l.Stream(ctx, dst.Name, true, src.PodIP, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer back.Stop()
		if !fwd.WaitOK(time.Time{}, 10, 15*time.Second) || !back.WaitOK(time.Time{}, 10, 15*time.Second) {
			t.Fatal("cross-region pod traffic not flowing before the failure")
		}
		killed := time.Now()
		if err := l.KillHost(victim); err != nil {
			t.Fatal(err)
		}
		if !fwd.WaitOK(killed, 25, 30*time.Second) || !back.WaitOK(killed, 25, 30*time.Second) {
			t.Fatalf("traffic did not recover within 30s after killing %s", victim)
		}
		of, nf := fwd.Outage(killed)
		ob, nb := back.Outage(killed)
		t.Logf("killed designated gateway %s: outage %s → %s: %s (%d failed probes), back: %s (%d failed probes)",
			victim, src.Name, dst.Name, of.Round(time.Millisecond), nf, ob.Round(time.Millisecond), nb)
		if of > 10*time.Second || ob > 10*time.Second {
			t.Errorf("outage above the baseline's few seconds: %s / %s", of, ob)
		}
		regions, _ = l.Admin.Regions(ctx)
		if now := regions[0].Designation["c1"]; now == victim {
			t.Errorf("designation did not move off the dead gateway %s", victim)
		}
		// statemesh status, as an operator runs it, shows the move.
		out, err := exec.Command(binary, "status", "--config", l.State.AdminConfig).CombinedOutput()
		if err != nil {
			t.Fatalf("statemesh status: %v\n%s", err, out)
		}
		text := string(out)
		if !regexp.MustCompile(`(?m)^\s+`+regexp.QuoteMeta(victim)+`\s+UNHEALTHY\s+active\s+-\s+\d+\s`).MatchString(text) ||
			!regexp.MustCompile(`(?m)^eu-central/c1\s+`+regexp.QuoteMeta(regions[0].Designation["c1"])+`\s`).MatchString(text) ||
			!regexp.MustCompile(`failover\s+eu-central/c1\s+designated gateway `+regexp.QuoteMeta(victim)+` → `).MatchString(text) {
			t.Errorf("statemesh status does not show %s down and eu-central/c1 moved:\n%s", victim, text)
		}
		// Bring the gateway back for the next scenarios.
		if err := l.StartAgent(victim); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "gateway back healthy", 30*time.Second, func() bool {
			n, err := l.Admin.Node(ctx, victim)
			return err == nil && n.Healthy != nil && *n.Healthy
		})
	})

	t.Run("RemoveNode", func(t *testing.T) {
		victim := host(t, l, "eu-central-c2-n2")
		pub := nodeKey(t, l, victim.Name)
		if err := l.Admin.RemoveNode(ctx, victim.Name); err != nil {
			t.Fatal(err)
		}
		l.Forget(victim.Name)
		took := waitFor(t, "removed node gone from every wg show", 15*time.Second, func() bool {
			for _, h := range l.State.Hosts {
				if h.Name == victim.Name {
					continue
				}
				peers, err := l.WGPeers(ctx, h.Name)
				if err != nil || slices.Contains(peers, pub) {
					return false
				}
			}
			return true
		})
		t.Logf("removed %s: gone from all %d peers' wg show in %s", victim.Name, len(l.State.Hosts)-1, took.Round(time.Millisecond))
	})

	t.Run("ControllerDownDataPlaneUp", func(t *testing.T) {
		src, dst := host(t, l, "eu-central-c1-n2"), host(t, l, "us-east-c1-n1") // both frontend: allowed
		s, err := l.Stream(ctx, src.Name, false, dst.Overlay, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Stop()
		if !s.WaitOK(time.Time{}, 10, 15*time.Second) {
			t.Fatal("traffic not flowing before stopping the controller")
		}
		stopped := time.Now()
		l.StopController()
		time.Sleep(3 * time.Second)
		if o, n := s.Outage(stopped); n > 0 {
			t.Errorf("traffic interrupted while the controller was down: %d failed probes, longest gap %s", n, o)
		}
		if err := l.StartController(ctx); err != nil {
			t.Fatal(err)
		}
		// Agents resync: a change made after the restart reaches them.
		victim := "us-east-c2-n2"
		pub := nodeKey(t, l, victim)
		if _, err := l.Admin.Quarantine(ctx, victim); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, "quarantine propagated after controller restart", 20*time.Second, func() bool {
			peers, err := l.WGPeers(ctx, "us-east-c2-n1")
			return err == nil && !slices.Contains(peers, pub)
		})
		t.Logf("controller restarted; agents resynced; a quarantine reached the peers in %s", took.Round(time.Millisecond))
		if _, err := l.Admin.Release(ctx, victim); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "release propagated", 20*time.Second, func() bool {
			peers, err := l.WGPeers(ctx, "us-east-c2-n1")
			return err == nil && slices.Contains(peers, pub)
		})
	})

	t.Run("TamperedBootIsQuarantined", func(t *testing.T) {
		victim := "eu-central-c2-n1"
		pub := nodeKey(t, l, victim)
		start := time.Now()
		if err := l.Tamper(victim, 7); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, "tampered node gone from every wg show", 30*time.Second, func() bool {
			for _, h := range l.State.Hosts {
				if h.Name == victim || h.Removed {
					continue
				}
				peers, err := l.WGPeers(ctx, h.Name)
				if err != nil || slices.Contains(peers, pub) {
					return false
				}
			}
			return true
		})
		n, err := l.Admin.Node(ctx, victim)
		if err != nil || n.State != "quarantined" || !strings.Contains(n.Reason, "PCR 7") {
			t.Fatalf("after tampering: %+v %v", n, err)
		}
		t.Logf("tampered %s (PCR 7): quarantined and gone from every peer's wg show %s after the tamper (re-attestation interval %s)",
			victim, took.Round(time.Millisecond), l.State.Config.ReattestInterval)
		_ = start
		l.Forget(victim)
	})

	t.Run("CorruptStateFileResyncs", func(t *testing.T) {
		// A truncated map.json: the agent refuses it with a clear message,
		// resyncs from the controller, and ends with the controller's map.
		const victim = "us-east-c1-n1"
		path := filepath.Join(l.State.Config.Dir, "hosts", victim, "map.json")
		if err := l.KillAgent(victim); err != nil {
			t.Fatal(err)
		}
		good, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(path, good[:len(good)/3], 0o600)
		if err := l.StartAgent(victim); err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(l.State.Config.Dir, "hosts", victim, "agent.log")
		waitFor(t, "the agent refusing the truncated map", 15*time.Second, func() bool {
			b, _ := os.ReadFile(logPath)
			return strings.Contains(string(b), "ignoring unreadable saved map; resyncing from the controller")
		})
		waitFor(t, "the controller's map applied again", 20*time.Second, func() bool {
			got, err := l.WGPeers(ctx, victim)
			return err == nil && slices.Equal(got, controllerPeers(t, l, victim))
		})
		waitFor(t, "map.json rewritten whole", 10*time.Second, func() bool {
			b, _ := os.ReadFile(path)
			var m netmap.Map
			return json.Unmarshal(b, &m) == nil && m.Validate() == nil
		})
	})

	t.Run("AgentRestartKeepsFlows", func(t *testing.T) {
		h := host(t, l, "us-east-c1-n2")
		peersBefore, err := l.WGPeers(ctx, h.Name)
		if err != nil {
			t.Fatal(err)
		}
		routesBefore := routes(t, l, h.Name)
		s, err := l.Stream(ctx, "us-east-c1-n1", false, h.Overlay, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Stop()
		if !s.WaitOK(time.Time{}, 10, 15*time.Second) {
			t.Fatal("traffic not flowing before the restart")
		}
		restarted := time.Now()
		if err := l.KillAgent(h.Name); err != nil {
			t.Fatal(err)
		}
		if err := l.StartAgent(h.Name); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		if o, n := s.Outage(restarted); n > 0 {
			t.Errorf("flow interrupted by the agent restart: %d failed probes, longest gap %s", n, o)
		}
		peersAfter, _ := l.WGPeers(ctx, h.Name)
		if !slices.Equal(peersBefore, peersAfter) {
			t.Errorf("peers changed across the restart:\nbefore %v\nafter  %v", peersBefore, peersAfter)
		}
		if r := routes(t, l, h.Name); r != routesBefore {
			t.Errorf("routes changed across the restart:\nbefore %s\nafter  %s", routesBefore, r)
		}
		check(t, l)
	})

	// Last: it leaves the lab with an untrusted controller.
	t.Run("AgentsAttestTheController", func(t *testing.T) {
		// Mutual aTLS: every agent attests the controller's swtpm against
		// the spec's attestation.controller; after a tampered controller
		// boot they take no map from it, and the data plane keeps going.
		var live []string
		for _, h := range l.State.Hosts {
			if !h.Removed {
				live = append(live, h.Name)
			}
		}
		metrics := func(h string) metricsText {
			return parseMetrics(hostOut(t, l, h, "curl", "-sf", "http://127.0.0.1:9465/metrics"))
		}
		const name = "statemesh_agent_controller_attestations_total"
		for _, h := range live {
			if m := metrics(h); m.sum(name, `result="ok"`) < 1 || m.sum(name, `result="untrusted"`) != 0 {
				t.Errorf("%s has not attested the controller:\n%s", h, m.grep(name))
			}
		}
		if err := l.Tamper("controller", 7); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, "every agent finding the controller untrusted", 30*time.Second, func() bool {
			for _, h := range live {
				if metrics(h).sum(name, `result="untrusted"`) == 0 {
					return false
				}
			}
			return true
		})
		t.Logf("controller PCR 7 tampered: all %d agents refused it within %s (interval %s)", len(live), took.Round(time.Millisecond), l.State.Config.ReattestInterval)
		// A change from the untrusted controller reaches nobody.
		victim := "us-east-c2-n2"
		pub := nodeKey(t, l, victim)
		if _, err := l.Admin.Quarantine(ctx, victim); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		if peers, err := l.WGPeers(ctx, "us-east-c2-n1"); err != nil || !slices.Contains(peers, pub) {
			t.Errorf("an agent applied a map from a controller that failed attestation (peer %s gone: %v %v)", victim, peers, err)
		}
		// The data plane keeps its last map.
		s, err := l.Stream(ctx, "eu-central-c1-n2", false, host(t, l, "us-east-c1-n1").Overlay, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Stop()
		if !s.WaitOK(time.Time{}, 10, 15*time.Second) {
			t.Error("traffic stopped while the controller is untrusted")
		}
	})
}

func nodeKey(t *testing.T, l *lab.Lab, name string) string {
	n, err := l.Admin.Node(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return netmap.Key(n.PublicKey).String()
}

func routes(t *testing.T, l *lab.Lab, host string) string {
	cmd, err := l.State.HostCmd(context.Background(), host, "ip", "route", "show", "proto", "158")
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// metricsText is a Prometheus exposition, line by line.
type metricsText []string

func parseMetrics(s string) metricsText {
	var out metricsText
	for _, l := range strings.Split(s, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// sum adds the values of a metric's series whose labels contain match.
func (m metricsText) sum(name, match string) float64 {
	total := 0.0
	for _, l := range m {
		series, value, ok := strings.Cut(l, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) || !strings.Contains(series, match) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err == nil {
			total += v
		}
	}
	return total
}

func (m metricsText) grep(prefixes ...string) string {
	var b strings.Builder
	for _, l := range m {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

type doctorFinding struct{ Severity, Check, Subject, Reason, Evidence, Fix string }

func hasCheck(fs []doctorFinding, check string) bool {
	return slices.ContainsFunc(fs, func(f doctorFinding) bool { return f.Check == check })
}
