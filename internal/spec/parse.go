package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxSpecBytes bounds the size of a spec document.
const MaxSpecBytes = 4 << 20

// Parse reads a YAML mesh spec, rejecting unknown fields and values of the
// wrong type (all at once, with field paths and lines), applies defaults
// and validates it. On success the returned mesh is ready to plan.
func Parse(data []byte) (*Mesh, error) {
	m, lines, zeros, err := decode(data)
	if err != nil {
		return nil, err
	}
	m.SetDefaults()
	if err := append(m.validate(lines), zeros...).Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// ParseNoDefaults decodes and structurally checks a spec without applying
// defaults or validating it.
func ParseNoDefaults(data []byte) (*Mesh, error) {
	m, _, _, err := decode(data)
	return m, err
}

// decode reads a spec into a Mesh, with the source line of every field
// written and the explicit zeros that would silently become defaults.
func decode(data []byte) (*Mesh, map[string]int, Errors, error) {
	if len(data) > MaxSpecBytes {
		// data may be a prefix of what the user has (readers stop one byte
		// past the limit): say only that it is too large.
		return nil, nil, nil, Errors{{Msg: fmt.Sprintf("spec is larger than the limit of %s bytes (4 MiB)", Count(MaxSpecBytes))}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, nil, Errors{{Msg: "spec is empty", Fix: "start with apiVersion: " + APIVersion + " and kind: " + Kind}}
		}
		return nil, nil, nil, Errors{{Msg: "not valid YAML: " + err.Error()}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, nil, nil, Errors{{Line: extra.Line, Msg: "more than one YAML document", Fix: "keep one Mesh document per file"}}
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	w := walker{lines: map[string]int{}}
	w.check(doc, reflect.TypeFor[Mesh](), "")
	if len(w.errs) > 0 {
		return nil, nil, nil, w.errs
	}
	var m Mesh
	if err := doc.Decode(&m); err != nil {
		return nil, nil, nil, Errors{{Msg: err.Error()}}
	}
	return &m, w.lines, w.zeros, nil
}

// walker checks a YAML node tree against a Go type before decoding, so that
// unknown fields and wrong types are reported by field path, all at once.
type walker struct {
	errs  Errors
	lines map[string]int
	// zeros are explicit zeros of fields where 0 means "default"
	// (zeroMeansDefault): reported with the validation errors.
	zeros Errors
}

func (w *walker) fail(path string, n *yaml.Node, fix, format string, args ...any) {
	w.errs = append(w.errs, FieldError{Path: path, Line: n.Line, Msg: fmt.Sprintf(format, args...), Fix: fix})
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func (w *walker) check(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode {
		w.fail(path, n, "write the value out instead of using a YAML alias", "YAML aliases are not supported")
		return
	}
	w.lines[path] = n.Line
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // absent value: the default applies
	}
	switch t.Kind() {
	case reflect.Pointer:
		w.check(n, t.Elem(), path)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.fail(path, n, "", "expected a mapping, got %s", describe(n))
			return
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fields[k.Value]
			if !ok {
				fix := "remove it"
				if s := suggest(k.Value, fields); s != "" {
					fix = fmt.Sprintf("did you mean %q?", s)
				}
				w.fail(join(path, k.Value), k, fix, "unknown field %q", k.Value)
				continue
			}
			w.check(v, f.Type, join(path, k.Value))
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.fail(path, n, "write a YAML list (- item)", "expected a list, got %s", describe(n))
			return
		}
		for i, c := range n.Content {
			w.check(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.fail(path, n, "", "expected a mapping, got %s", describe(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if t.Key().Kind() == reflect.Int && (k.Kind != yaml.ScalarNode || k.Tag != "!!int") {
				w.fail(join(path, k.Value), k, "", "expected an integer key, got %s", describe(k))
				continue
			}
			w.check(v, t.Elem(), join(path, k.Value))
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			w.fail(path, n, "", "expected a string, got %s", describe(n))
		}
	case reflect.Int:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			w.fail(path, n, "", "expected an integer, got %s", describe(n))
			return
		}
		v, err := strconv.ParseInt(n.Value, 0, 32)
		if err != nil {
			w.fail(path, n, "", "integer %s is out of range", n.Value)
		} else if v == 0 {
			if def, ok := zeroMeansDefault[lastField(path)]; ok {
				w.zeros = append(w.zeros, FieldError{Path: path, Line: n.Line, Msg: lastField(path) + " cannot be 0",
					Fix: "leave the field out for the default (" + def + ")"})
			}
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			w.fail(path, n, "use true or false", "expected true or false, got %s", describe(n))
		}
	}
}

// zeroMeansDefault lists the integer fields whose zero value the Go types
// use for "not set" (the default then applies): an explicit 0 in a spec is
// refused with the field path instead of silently becoming the default.
// Fields where 0 is a real value (geneveOptionBytes, PCR numbers) are not
// here.
var zeroMeansDefault = map[string]string{
	"mtu":                  fmt.Sprint(DefaultUnderlayMTU),
	"underlayMTU":          "the underlay's MTU",
	"gateways":             fmt.Sprint(DefaultGateways),
	"maxNodes":             fmt.Sprint(MaxNodesPerCluster),
	"maxPods":              "maxNodes × maxPodsPerNode, at most " + fmt.Sprint(MaxPodsPerCluster),
	"maxPodsPerNode":       fmt.Sprint(DefaultMaxPodsPerNode),
	"clusterID":            "the lowest free ID, assigned by the plan",
	"multiplier":           fmt.Sprint(DefaultBFDMultiples),
	"maxConnectedClusters": "255",
	"peersPerRegion":       fmt.Sprint(DefaultPeersPerRegion),
}

// lastField returns the last field name of a path (regions[0].gateways ->
// gateways).
func lastField(path string) string {
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		path = path[i+1:]
	}
	name, _, _ := strings.Cut(path, "[")
	return name
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unsupported node"
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[name] = f
	}
	return out
}

// suggest returns the known field closest to s, when it is close enough to
// be a likely typo (case differences or an edit distance of at most 2).
func suggest(s string, fields map[string]reflect.StructField) string {
	best, bestD := "", 3
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if strings.EqualFold(n, s) {
			return n
		}
		if d := editDistance(strings.ToLower(s), strings.ToLower(n)); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
