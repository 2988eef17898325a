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
	m, lines, err := decode(data)
	if err != nil {
		return nil, err
	}
	m.SetDefaults()
	if err := m.validate(lines).Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// ParseNoDefaults decodes and structurally checks a spec without applying
// defaults or validating it.
func ParseNoDefaults(data []byte) (*Mesh, error) {
	m, _, err := decode(data)
	return m, err
}

func decode(data []byte) (*Mesh, map[string]int, error) {
	if len(data) > MaxSpecBytes {
		return nil, nil, Errors{{Msg: fmt.Sprintf("spec is %d bytes, the limit is %d", len(data), MaxSpecBytes)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, Errors{{Msg: "spec is empty", Fix: "start with apiVersion: " + APIVersion + " and kind: " + Kind}}
		}
		return nil, nil, Errors{{Msg: "not valid YAML: " + err.Error()}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, nil, Errors{{Line: extra.Line, Msg: "more than one YAML document", Fix: "keep one Mesh document per file"}}
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	w := walker{lines: map[string]int{}}
	w.check(doc, reflect.TypeFor[Mesh](), "")
	if len(w.errs) > 0 {
		return nil, nil, w.errs
	}
	var m Mesh
	if err := doc.Decode(&m); err != nil {
		return nil, nil, Errors{{Msg: err.Error()}}
	}
	return &m, w.lines, nil
}

// walker checks a YAML node tree against a Go type before decoding, so that
// unknown fields and wrong types are reported by field path, all at once.
type walker struct {
	errs  Errors
	lines map[string]int
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
		if _, err := strconv.ParseInt(n.Value, 0, 32); err != nil {
			w.fail(path, n, "", "integer %s is out of range", n.Value)
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			w.fail(path, n, "use true or false", "expected true or false, got %s", describe(n))
		}
	}
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
