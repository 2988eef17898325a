// Package contract checks HTTP requests and responses against an OpenAPI
// 2.0 (swagger) description: the subset Netmaker's swagger.yaml uses
// (operations by method and path template; path, query and body
// parameters; schemas with $ref, allOf, type, properties, required,
// additionalProperties, items, enum, min/maxLength, minimum/maximum and
// the int32/int64 formats; operation security).
//
// It owns no knowledge of Netmaker beyond one documented exception
// (LooseEnums). nmtest runs every request StateMesh sends through it.
package contract

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Contract is a loaded swagger description.
type Contract struct {
	ops  []*Operation
	defs map[string]any

	// Strict refuses object fields a schema does not name even where the
	// schema leaves additionalProperties open. Netmaker decodes bodies
	// with Go's encoding/json, which drops unknown fields silently, so a
	// misspelt field is lost without an error: strict catches it.
	Strict bool

	// LooseEnums names definitions whose enum is not a closed set. By
	// default schema.NetworkID: swag emitted the Go type's one named
	// constant ([all_networks]) as an enum, while the server takes any
	// network name there (ACL network_id, tag network).
	LooseEnums map[string]bool
}

// Operation is one method on one path template.
type Operation struct {
	Method  string // GET, POST, ...
	Path    string // template, e.g. /api/hosts/{hostid}
	Summary string
	// Secured operations need an Authorization header.
	Secured bool
	Params  []Param
	// Body is the schema of the body parameter (nil: no body).
	Body         map[string]any
	BodyRequired bool
	// Responses maps a status ("200", "default") to its schema (nil: any).
	Responses map[string]map[string]any

	segments []string
}

// Name is "METHOD /path/{template}".
func (o *Operation) Name() string { return o.Method + " " + o.Path }

// Param is a path or query parameter.
type Param struct {
	Name, In, Type   string
	Required         bool
	Enum             []any
	Items            map[string]any
	CollectionFormat string
}

// Violation is a request or response off the contract: the operation
// (empty when none matched), the field ("method", "path", "query.network",
// "body.src_type[0].id", "header.Authorization") and what is wrong.
type Violation struct {
	Op, Field, Msg string
}

func (v *Violation) Error() string {
	var b strings.Builder
	if v.Op != "" {
		b.WriteString(v.Op + ": ")
	}
	if v.Field != "" {
		b.WriteString(v.Field + ": ")
	}
	b.WriteString(v.Msg)
	return b.String()
}

// Load reads a swagger.yaml (OpenAPI 2.0).
func Load(path string) (*Contract, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading the contract: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse reads a swagger document.
func Parse(data []byte) (*Contract, error) {
	var doc struct {
		Swagger     string                               `yaml:"swagger"`
		Paths       map[string]map[string]map[string]any `yaml:"paths"`
		Definitions map[string]any                       `yaml:"definitions"`
		Security    []any                                `yaml:"security"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Swagger != "2.0" {
		return nil, fmt.Errorf("swagger %q, want 2.0", doc.Swagger)
	}
	c := &Contract{defs: doc.Definitions, LooseEnums: map[string]bool{"schema.NetworkID": true}}
	for p, methods := range doc.Paths {
		for m, raw := range methods {
			switch m {
			case "get", "put", "post", "delete", "patch", "head", "options":
			default:
				continue // path-level parameters and extensions: not used by Netmaker's document
			}
			o := &Operation{Method: strings.ToUpper(m), Path: p, Summary: str(raw["summary"]), segments: split(p)}
			sec, declared := raw["security"].([]any)
			if !declared {
				sec = doc.Security
			}
			o.Secured = len(sec) > 0
			params, _ := raw["parameters"].([]any)
			for _, x := range params {
				pm, _ := x.(map[string]any)
				pr := Param{Name: str(pm["name"]), In: str(pm["in"]), Type: str(pm["type"]), Required: pm["required"] == true, CollectionFormat: str(pm["collectionFormat"])}
				pr.Enum, _ = pm["enum"].([]any)
				pr.Items, _ = pm["items"].(map[string]any)
				if pr.In == "body" {
					o.Body, _ = pm["schema"].(map[string]any)
					if o.Body == nil {
						o.Body = map[string]any{}
					}
					o.BodyRequired = pr.Required
					continue
				}
				o.Params = append(o.Params, pr)
			}
			o.Responses = map[string]map[string]any{}
			rs, _ := raw["responses"].(map[string]any)
			for code, r := range rs {
				rm, _ := r.(map[string]any)
				s, _ := rm["schema"].(map[string]any)
				o.Responses[code] = s
			}
			c.ops = append(c.ops, o)
		}
	}
	slices.SortFunc(c.ops, func(a, b *Operation) int { return strings.Compare(a.Name(), b.Name()) })
	return c, nil
}

func str(v any) string { s, _ := v.(string); return s }

func split(p string) []string { return strings.Split(strings.Trim(p, "/"), "/") }

func isParam(seg string) bool { return strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") }

// Operations lists the contract's operations, sorted.
func (c *Contract) Operations() []*Operation { return slices.Clone(c.ops) }

// Lookup returns the operation with exactly this method and path template.
func (c *Contract) Lookup(method, template string) *Operation {
	for _, o := range c.ops {
		if o.Method == method && o.Path == template {
			return o
		}
	}
	return nil
}

// Match finds the operation serving a concrete request path and the path
// parameters' values; literal segments win over parameters, as in the
// server's router (/api/v1/pending_hosts/approve/{id} is not a {network}).
func (c *Contract) Match(method, rawPath string) (*Operation, map[string]string, error) {
	segs := split(rawPath)
	var best *Operation
	var bestVals map[string]string
	bestScore := -1
	var methods []string
	for _, o := range c.ops {
		vals, score, ok := matchPath(o.segments, segs)
		if !ok {
			continue
		}
		if o.Method != method {
			methods = append(methods, o.Method)
			continue
		}
		if score > bestScore {
			best, bestVals, bestScore = o, vals, score
		}
	}
	switch {
	case best != nil:
		return best, bestVals, nil
	case len(methods) > 0:
		slices.Sort(methods)
		return nil, nil, &Violation{Field: "method", Msg: fmt.Sprintf("%s %s: the path takes %s, not %s", method, rawPath, strings.Join(slices.Compact(methods), ", "), method)}
	default:
		return nil, nil, &Violation{Field: "path", Msg: fmt.Sprintf("%s %s: no such operation in the contract", method, rawPath)}
	}
}

// matchPath matches segments; score counts literal segments.
func matchPath(tmpl, segs []string) (map[string]string, int, bool) {
	if len(tmpl) != len(segs) {
		return nil, 0, false
	}
	vals := map[string]string{}
	score := 0
	for i, s := range tmpl {
		if isParam(s) {
			v, err := url.PathUnescape(segs[i])
			if err != nil || v == "" {
				return nil, 0, false
			}
			vals[strings.Trim(s, "{}")] = v
			continue
		}
		if s != segs[i] {
			return nil, 0, false
		}
		score++
	}
	return vals, score, true
}

// CheckRequest checks a request: a known operation and method; path and
// query parameters present when required, of their type and enum, and no
// query parameter the operation does not declare; the Authorization
// header on secured operations; a JSON body when (and only when) the
// operation takes one, valid for its schema. It returns the operation
// matched, if any, and a *Violation.
func (c *Contract) CheckRequest(method, rawPath string, query url.Values, header http.Header, body []byte) (*Operation, error) {
	op, vals, err := c.Match(method, rawPath)
	if err != nil {
		return nil, err
	}
	fail := func(field, format string, args ...any) error {
		return &Violation{Op: op.Name(), Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	declared := map[string]bool{}
	for _, p := range op.Params {
		var vs []string
		switch p.In {
		case "path":
			if v, ok := vals[p.Name]; ok {
				vs = []string{v}
			}
		case "query":
			declared[p.Name] = true
			vs = query[p.Name]
		case "header":
			if v := header.Get(p.Name); v != "" {
				vs = []string{v}
			}
		default:
			continue // formData: not used
		}
		field := p.In + "." + p.Name
		if len(vs) == 0 {
			if p.Required {
				return op, fail(field, "required parameter is missing")
			}
			continue
		}
		if len(vs) > 1 && p.Type != "array" {
			return op, fail(field, "given %d times", len(vs))
		}
		if err := checkParam(p, vs); err != nil {
			return op, fail(field, "%v", err)
		}
	}
	for k := range query {
		if !declared[k] {
			return op, fail("query."+k, "the operation has no such query parameter")
		}
	}
	if op.Secured {
		if a := header.Get("Authorization"); !strings.HasPrefix(a, "Bearer ") || strings.TrimSpace(a[len("Bearer "):]) == "" {
			return op, fail("header.Authorization", "the operation is secured: want Authorization: Bearer TOKEN")
		}
	}
	if op.Body == nil {
		if len(body) > 0 {
			return op, fail("body", "the operation takes no body")
		}
		return op, nil
	}
	if len(body) == 0 {
		if op.BodyRequired {
			return op, fail("body", "the body is required")
		}
		return op, nil
	}
	if ct := header.Get("Content-Type"); header != nil && !strings.HasPrefix(ct, "application/json") {
		return op, fail("header.Content-Type", "%q, want application/json", ct)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return op, fail("body", "not JSON: %v", err)
	}
	if err := c.check(op.Body, v, "body", c.Strict); err != nil {
		return op, withOp(err, op)
	}
	return op, nil
}

// CheckResponse checks an answer of op: its status is declared (or a
// default is) and the body is valid for that status's schema.
func (c *Contract) CheckResponse(op *Operation, status int, body []byte) error {
	code := strconv.Itoa(status)
	schema, ok := op.Responses[code]
	if !ok {
		if schema, ok = op.Responses["default"]; !ok {
			return &Violation{Op: op.Name(), Field: "status", Msg: fmt.Sprintf("%d is not a declared answer", status)}
		}
	}
	if schema == nil {
		return nil
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return &Violation{Op: op.Name(), Field: "response", Msg: fmt.Sprintf("not JSON: %v", err)}
	}
	return withOp(c.check(schema, v, "response", c.Strict), op)
}

// CheckDefinition checks a decoded JSON value against a named definition
// (e.g. "models.Acl").
func (c *Contract) CheckDefinition(name string, v any) error {
	if _, ok := c.defs[name]; !ok {
		return fmt.Errorf("no definition %q", name)
	}
	return c.check(map[string]any{"$ref": "#/definitions/" + name}, v, name, c.Strict)
}

func withOp(err error, op *Operation) error {
	if v, ok := err.(*Violation); ok {
		v.Op = op.Name()
	}
	return err
}

func checkParam(p Param, vs []string) error {
	if p.Type == "array" {
		var items []string
		for _, v := range vs {
			if p.CollectionFormat == "multi" {
				items = append(items, v)
				continue
			}
			items = append(items, strings.Split(v, ",")...) // csv, the default
		}
		for _, it := range items {
			if err := checkScalar(str(p.Items["type"]), anys(p.Items["enum"]), it); err != nil {
				return err
			}
		}
		return nil
	}
	return checkScalar(p.Type, p.Enum, vs[0])
}

func anys(v any) []any { a, _ := v.([]any); return a }

func checkScalar(typ string, enum []any, v string) error {
	switch typ {
	case "integer":
		if _, err := strconv.ParseInt(v, 10, 64); err != nil {
			return fmt.Errorf("%q is not an integer", v)
		}
	case "number":
		if _, err := strconv.ParseFloat(v, 64); err != nil {
			return fmt.Errorf("%q is not a number", v)
		}
	case "boolean":
		if v != "true" && v != "false" {
			return fmt.Errorf("%q is not a boolean", v)
		}
	}
	if len(enum) > 0 && !slices.ContainsFunc(enum, func(e any) bool { return fmt.Sprint(e) == v }) {
		return fmt.Errorf("%q is not one of %v", v, enum)
	}
	return nil
}
