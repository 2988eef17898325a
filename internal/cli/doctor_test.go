package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDoctorSpec(t *testing.T) {
	r := run(t, "", "doctor", "-f", "../../examples/vxlan.yaml")
	if r.code != 0 || !strings.Contains(r.stdout, "WARNING encapsulation: cilium.routingMode") || !strings.Contains(r.stdout, "fix:      set cilium.routingMode: native") {
		t.Errorf("vxlan spec: %+v", r)
	}
	if r := run(t, "", "doctor", "-f", "../../examples/vxlan.yaml", "--warnings-fail"); r.code != ExitError {
		t.Errorf("--warnings-fail with warnings exits %d", r.code)
	}
	r = run(t, "", "doctor", "-f", "../../examples/small.yaml", "-o", "json")
	var fs []struct{ Severity, Check string }
	if err := json.Unmarshal([]byte(r.stdout), &fs); err != nil || r.code != 0 {
		t.Fatalf("json: %v %+v", err, r)
	}
	for _, f := range fs {
		if f.Severity == "error" || f.Check == "encapsulation" {
			t.Errorf("small.yaml: %+v", f)
		}
	}
}

func TestDoctorCiliumValues(t *testing.T) {
	dir := t.TempDir()
	if r := run(t, "", "render", "all", "-f", "../../examples/small.yaml", "--out", dir); r.code != 0 {
		t.Fatalf("render all: %+v", r)
	}
	if r := run(t, "", "doctor", "-f", "../../examples/small.yaml", "--cilium-values", dir); r.code != 0 || strings.Contains(r.stdout, "cilium-mtu") {
		t.Fatalf("rendered values: %+v", r)
	}
	var file string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "cilium-values.yaml" && file == "" {
			file = p
		}
		return err
	})
	data, _ := os.ReadFile(file)
	lines := strings.Split(string(data), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "MTU:") {
			lines[i] = "MTU: 1500"
		}
	}
	os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o644)
	r := run(t, "", "doctor", "-f", "../../examples/small.yaml", "--cilium-values", dir)
	if r.code != ExitError || !strings.Contains(r.stdout, "ERROR   cilium-mtu") || !strings.Contains(r.stdout, "MTU 1500, the plan's is 1440") {
		t.Errorf("values with MTU 1500: %+v", r)
	}
}
