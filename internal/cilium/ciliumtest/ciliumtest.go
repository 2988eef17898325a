// Package ciliumtest gives tests Cilium's own artefacts: its CRD schemas
// (and chart) from the github.com/cilium/cilium module of the pinned
// version, fetched through the Go module proxy or the module cache.
package ciliumtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/cilium"
)

var (
	schemaMu sync.Mutex
	schemas  = map[string]*openapi3.Schema{}

	once   sync.Once
	dir    string
	dirErr error
)

// ModuleDir returns the directory of the Cilium module (downloading it if
// needed); the test fails when it cannot be had.
func ModuleDir(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		out, err := exec.Command("go", "mod", "download", "-json", cilium.Module+"@"+cilium.Version).Output()
		if err != nil {
			dirErr = fmt.Errorf("go mod download %s@%s: %v (%s)", cilium.Module, cilium.Version, err, out)
			return
		}
		var info struct{ Dir, Error string }
		if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
			dirErr = fmt.Errorf("go mod download %s@%s: %s %v", cilium.Module, cilium.Version, info.Error, err)
			return
		}
		dir = info.Dir
	})
	if dirErr != nil {
		t.Fatal(dirErr)
	}
	return dir
}

// crdFiles maps kinds to their CRD file in the module.
var crdFiles = map[string]string{
	cilium.KindClusterwide: "ciliumclusterwidenetworkpolicies.yaml",
	cilium.KindNamespaced:  "ciliumnetworkpolicies.yaml",
	"CiliumNodeConfig":     "ciliumnodeconfigs.yaml",
}

// Schema returns the openAPIV3Schema of a kind's cilium.io/v2 CRD, made
// strict: an object schema that lists its properties refuses others (the
// API server would silently prune them, losing what was meant).
func Schema(t testing.TB, kind string) *openapi3.Schema {
	t.Helper()
	schemaMu.Lock()
	defer schemaMu.Unlock()
	if s, ok := schemas[kind]; ok {
		return s
	}
	path := filepath.Join(ModuleDir(t), "pkg/k8s/apis/cilium.io/client/crds/v2", crdFiles[kind])
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Names    struct{ Kind string }
			Versions []struct {
				Name   string
				Schema struct {
					OpenAPIV3Schema map[string]any `yaml:"openAPIV3Schema"`
				}
			}
		}
	}
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	if crd.Spec.Names.Kind != kind {
		t.Fatalf("%s defines %s, not %s", path, crd.Spec.Names.Kind, kind)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name != "v2" {
			continue
		}
		strict(v.Schema.OpenAPIV3Schema)
		js, err := json.Marshal(v.Schema.OpenAPIV3Schema)
		if err != nil {
			t.Fatal(err)
		}
		var s openapi3.Schema
		if err := json.Unmarshal(js, &s); err != nil {
			t.Fatal(err)
		}
		schemas[kind] = &s
		return &s
	}
	t.Fatalf("%s has no v2 version", path)
	return nil
}

func strict(n any) {
	switch v := n.(type) {
	case map[string]any:
		// Only real object schemas: the oneOf/anyOf branches that merely
		// name required properties stay open.
		if _, ok := v["properties"]; ok && v["type"] == "object" {
			if _, ok := v["additionalProperties"]; !ok && v["x-kubernetes-preserve-unknown-fields"] != true {
				v["additionalProperties"] = false
			}
		}
		for _, c := range v {
			strict(c)
		}
	case []any:
		for _, c := range v {
			strict(c)
		}
	}
}

// Validate checks an object (any value that marshals to JSON) against its
// kind's CRD schema.
func Validate(t testing.TB, kind string, obj any) error {
	t.Helper()
	js, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	var generic any
	if err := json.Unmarshal(js, &generic); err != nil {
		return err
	}
	return Schema(t, kind).VisitJSON(generic, openapi3.MultiErrors())
}

// Chart returns the directory of Cilium's Helm chart in the module.
func Chart(t testing.TB) string {
	t.Helper()
	return filepath.Join(ModuleDir(t), "install/kubernetes/cilium")
}

var (
	valuesOnce   sync.Once
	valuesSchema *jsonschema.Schema
	valuesErr    error
)

// ValidateValues checks Helm values (YAML) against the chart's
// values.schema.json, as helm does before rendering.
func ValidateValues(t testing.TB, valuesYAML []byte) error {
	t.Helper()
	path := filepath.Join(Chart(t), "values.schema.json")
	valuesOnce.Do(func() {
		c := jsonschema.NewCompiler()
		valuesSchema, valuesErr = c.Compile(path)
	})
	if valuesErr != nil {
		t.Fatalf("compiling %s: %v", path, valuesErr)
	}
	var v any
	if err := yaml.Unmarshal(valuesYAML, &v); err != nil {
		return err
	}
	// Through JSON: the schema validator wants JSON types.
	js, err := json.Marshal(v)
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if err != nil {
		return err
	}
	if err := valuesSchema.Validate(inst); err != nil {
		return err
	}
	// The chart's schema lets unknown keys through (the chart would ignore
	// them): refuse keys the chart does not have, so a misspelt key fails.
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		return err
	}
	return knownKeys(schema, v, "")
}

func knownKeys(schema map[string]any, v any, path string) error {
	m, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	props, ok := schema["properties"].(map[string]any)
	if !ok {
		return nil // a free-form object
	}
	for k, child := range m {
		sub, ok := props[k].(map[string]any)
		if !ok {
			return fmt.Errorf("%s%s: the chart has no such value", path, k)
		}
		if err := knownKeys(sub, child, path+k+"."); err != nil {
			return err
		}
	}
	return nil
}

// ValidateCRD checks an object against a cilium.io/v2 CRD by kind
// (CiliumNodeConfig and the policy kinds).
func ValidateCRD(t testing.TB, kind string, obj any) error { return Validate(t, kind, obj) }
