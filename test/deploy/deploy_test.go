// Package deploy tests the packaging: the Helm chart lints and renders
// with the real helm, the systemd units run flags the binary has, and the
// Dockerfile builds what exists.
package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/cli"
	"github.com/statemesh/statemesh/internal/testenv"
)

const chart = "../../deploy/helm/statemesh"

func helmTemplate(t *testing.T, args ...string) ([]map[string]any, string, error) {
	t.Helper()
	helm := testenv.RequireBinary(t, "helm")
	out, err := exec.Command(helm, append([]string{"template", "sm", chart, "--namespace", "statemesh", "--kube-version", "1.33.0"}, args...)...).CombinedOutput()
	if err != nil {
		return nil, string(out), err
	}
	var docs []map[string]any
	dec := yaml.NewDecoder(strings.NewReader(string(out)))
	for {
		var d map[string]any
		if err := dec.Decode(&d); err != nil {
			break
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs, string(out), nil
}

func find(docs []map[string]any, kind, name string) map[string]any {
	for _, d := range docs {
		if d["kind"] == kind && d["metadata"].(map[string]any)["name"] == name {
			return d
		}
	}
	return nil
}

func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func TestHelmLint(t *testing.T) {
	helm := testenv.RequireBinary(t, "helm")
	out, err := exec.Command(helm, "lint", "--strict", chart, "--set", "agent.controller=https://statemesh.example.com:7443").CombinedOutput()
	if err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
}

func TestHelmTemplateDefaults(t *testing.T) {
	docs, out, err := helmTemplate(t, "--set", "agent.controller=https://statemesh.example.com:7443")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ds := find(docs, "DaemonSet", "sm-agent")
	if ds == nil {
		t.Fatalf("no agent DaemonSet:\n%s", out)
	}
	pod := dig(ds, "spec", "template", "spec")
	if dig(pod, "hostNetwork") != true {
		t.Error("the agent must run on the host network")
	}
	c := dig(pod, "containers", 0)
	sc := dig(c, "securityContext")
	if dig(sc, "privileged") != false || dig(sc, "readOnlyRootFilesystem") != true {
		t.Errorf("agent security context: %v", sc)
	}
	add := dig(sc, "capabilities", "add")
	if list, _ := add.([]any); len(list) != 2 || list[0] != "NET_ADMIN" || list[1] != "NET_RAW" {
		t.Errorf("agent capabilities: %v, want exactly NET_ADMIN and NET_RAW", add)
	}
	args := strings.Join(toStrings(dig(c, "args")), " ")
	for _, want := range []string{"--role=node", "--controller=https://statemesh.example.com:7443", "--tpm=/dev/tpmrm0", "--name=$(STATEMESH_NODE_NAME)"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args lack %s: %s", want, args)
		}
	}
	ss := find(docs, "StatefulSet", "sm-controller")
	if ss == nil || dig(ss, "spec", "template", "spec", "securityContext", "runAsNonRoot") != true {
		t.Errorf("controller StatefulSet missing or running as root")
	}
	if find(docs, "DaemonSet", "sm-gateway") != nil {
		t.Error("gateways are off by default")
	}
	// The agent's and controller's arguments are flags the binary has.
	checkArgs(t, toStrings(dig(c, "args")))
	checkArgs(t, toStrings(dig(ss, "spec", "template", "spec", "containers", 0, "args")))
}

func TestHelmTemplateGatewaysAndEtcd(t *testing.T) {
	docs, out, err := helmTemplate(t, "--set", "agent.controller=https://c:7443", "--set", "gateway.enabled=true",
		"--set", "controller.store=etcd", "--set", "controller.replicas=3", "--set", "controller.etcdEndpoints={http://etcd-0:2379,http://etcd-1:2379}",
		"--set-string", "controller.spec=apiVersion: statemesh.dev/v1alpha1", "--set", "agent.underlayAllow={tcp/22,tcp/10250}")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	gw := find(docs, "DaemonSet", "sm-gateway")
	if gw == nil {
		t.Fatalf("no gateway DaemonSet:\n%s", out)
	}
	args := strings.Join(toStrings(dig(gw, "spec", "template", "spec", "containers", 0, "args")), " ")
	if !strings.Contains(args, "--role=gateway") || !strings.Contains(args, "--public-endpoint=$(STATEMESH_HOST_IP)") {
		t.Errorf("gateway args: %s", args)
	}
	ctl := strings.Join(toStrings(dig(find(docs, "StatefulSet", "sm-controller"), "spec", "template", "spec", "containers", 0, "args")), " ")
	if !strings.Contains(ctl, "--store=etcd") || !strings.Contains(ctl, "--etcd-endpoints=http://etcd-0:2379,http://etcd-1:2379") || !strings.Contains(ctl, "--apply=/etc/statemesh/mesh.yaml") {
		t.Errorf("controller args: %s", ctl)
	}
	if find(docs, "ConfigMap", "sm-spec") == nil {
		t.Error("no spec ConfigMap")
	}
	agentArgs := strings.Join(toStrings(dig(find(docs, "DaemonSet", "sm-agent"), "spec", "template", "spec", "containers", 0, "args")), " ")
	if !strings.Contains(agentArgs, "--underlay-allow=tcp/22 --underlay-allow=tcp/10250") {
		t.Errorf("agent args: %s", agentArgs)
	}
}

// TestHelmTemplateControllerAttestation: with a ConfigMap holding the
// spec, agents (nodes and gateways) get --controller-attestation and the
// ConfigMap mounted where the flag points.
func TestHelmTemplateControllerAttestation(t *testing.T) {
	docs, out, err := helmTemplate(t, "--set", "agent.controller=https://c:7443", "--set", "gateway.enabled=true",
		"--set", "agent.controllerAttestation.configMap=mesh-spec", "--set", "agent.controllerAttestation.interval=1m")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, name := range []string{"sm-agent", "sm-gateway"} {
		ds := find(docs, "DaemonSet", name)
		c := dig(ds, "spec", "template", "spec", "containers", 0)
		args := strings.Join(toStrings(dig(c, "args")), " ")
		if !strings.Contains(args, "--controller-attestation=/etc/statemesh/controller-attestation/mesh.yaml") || !strings.Contains(args, "--controller-attestation-interval=1m") {
			t.Errorf("%s args: %s", name, args)
		}
		mounted, volume := false, false
		for _, m := range dig(c, "volumeMounts").([]any) {
			mm := m.(map[string]any)
			mounted = mounted || mm["name"] == "controller-attestation" && mm["mountPath"] == "/etc/statemesh/controller-attestation"
		}
		for _, v := range dig(ds, "spec", "template", "spec", "volumes").([]any) {
			vv := v.(map[string]any)
			volume = volume || vv["name"] == "controller-attestation" && dig(vv, "configMap", "name") == "mesh-spec"
		}
		if !mounted || !volume {
			t.Errorf("%s: spec ConfigMap mounted %v, volume %v", name, mounted, volume)
		}
	}
	docs, _, _ = helmTemplate(t, "--set", "agent.controller=https://c:7443")
	if args := strings.Join(toStrings(dig(find(docs, "DaemonSet", "sm-agent"), "spec", "template", "spec", "containers", 0, "args")), " "); strings.Contains(args, "controller-attestation") {
		t.Errorf("controller attestation on by default: %s", args)
	}
}

func TestHelmTemplateRefusals(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--set", "agent.controller=https://c:7443", "--set", "controller.replicas=2"}, "needs controller.store: etcd"},
		{[]string{"--set", "agent.controller=https://c:7443", "--set", "controller.store=etcd"}, "needs controller.etcdEndpoints"},
		{nil, "agent.controller (the controller URL) is required"},
	} {
		if _, out, err := helmTemplate(t, tc.args...); err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%v: %v\n%s", tc.args, err, out)
		}
	}
}

// TestSystemdUnits: the units' ExecStart lines use flags the binary has.
func TestSystemdUnits(t *testing.T) {
	units, _ := filepath.Glob("../../deploy/systemd/*.service")
	if len(units) != 2 {
		t.Fatalf("units: %v", units)
	}
	re := regexp.MustCompile(`(?m)^ExecStart=/usr/local/bin/statemesh (.*)$`)
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		m := re.FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s: no ExecStart", u)
		}
		// Environment references become placeholders of the right shape.
		line := strings.NewReplacer("${STATEMESH_CONTROLLER}", "https://c:7443", "${STATEMESH_ROLE}", "node", "${STATEMESH_PUBLIC_ENDPOINT}", "").Replace(string(m[1]))
		checkArgs(t, strings.Fields(line))
	}
}

// TestDockerfile: what the Dockerfile builds and sets exists.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{"./cmd/statemesh", "github.com/statemesh/statemesh/internal/cli.Version", "nftables", "65532"} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if _, err := os.Stat("../../cmd/statemesh"); err != nil {
		t.Error(err)
	}
	if cli.Version == "" {
		t.Error("cli.Version is not a variable the build can set")
	}
}

// checkArgs parses a command line with the real CLI parser and the
// command's own flag checks (cli.CheckArgs): unknown commands or flags and
// values the command refuses fail.
func checkArgs(t *testing.T, args []string) {
	t.Helper()
	if err := cli.CheckArgs(args); err != nil {
		t.Errorf("statemesh %s: %v", strings.Join(args, " "), err)
	}
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, len(l))
	for i, x := range l {
		out[i], _ = x.(string)
	}
	return out
}

// TestGrafanaDashboard: the dashboard is valid JSON and queries only
// documented metrics (docs/metrics.md), which the code registers.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("../../deploy/grafana/statemesh.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil || len(d.Panels) == 0 {
		t.Fatalf("dashboard: %v", err)
	}
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`(statemesh_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}
	code := ""
	for _, f := range []string{"../../internal/controller/metrics.go", "../../internal/agent/metrics.go", "../../internal/netmakersync/sync.go", "../../internal/agent/guard.go", "../../internal/agent/ebpffw.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		code += string(b)
	}
	for name := range documented {
		if !strings.Contains(code, `"`+name+`"`) {
			t.Errorf("docs/metrics.md documents %s, which the code does not register", name)
		}
	}
	series := regexp.MustCompile(`statemesh_[a-z_]+`)
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range series.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_count"), "_sum")
				if !documented[base] {
					t.Errorf("panel %q queries %s, which is not documented", p.Title, m)
				}
			}
		}
	}
}
