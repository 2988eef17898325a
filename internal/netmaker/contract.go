// Package netmaker drives a Netmaker server (https://netmaker.io) from
// StateMesh's state: one Netmaker network per region, enrollment keys per
// cluster, pending hosts approved only when their WireGuard key belongs to
// an attested StateMesh node, hosts of quarantined or removed nodes taken
// out of their networks, segments and rules as tags and ACL policies.
//
// The contract is Netmaker's published OpenAPI 2.0 description
// (../shared/netmaker/swagger.yaml); Contract checks requests against it,
// and the tests run every call through a server that does.
package netmaker

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Contract is the subset of an OpenAPI 2.0 description needed to check
// requests and responses: operations by method and path template, their
// parameters, and the schema definitions.
type Contract struct {
	ops  []operation
	defs map[string]any
}

type operation struct {
	method   string
	segments []string // "{name}" for parameters
	params   []param
	body     map[string]any // schema of the body parameter
	resp     map[string]any // status code → schema
}

type param struct {
	name, in, typ string
	required      bool
	enum          []any
}

// LoadContract reads a swagger.yaml.
func LoadContract(path string) (*Contract, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Swagger     string                               `yaml:"swagger"`
		Paths       map[string]map[string]map[string]any `yaml:"paths"`
		Definitions map[string]any                       `yaml:"definitions"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if doc.Swagger != "2.0" {
		return nil, fmt.Errorf("%s: swagger %q, want 2.0", path, doc.Swagger)
	}
	c := &Contract{defs: doc.Definitions}
	for p, methods := range doc.Paths {
		for m, op := range methods {
			if m == "parameters" {
				continue
			}
			o := operation{method: strings.ToUpper(m), segments: strings.Split(strings.Trim(p, "/"), "/")}
			ps, _ := op["parameters"].([]any)
			for _, x := range ps {
				pm, _ := x.(map[string]any)
				pr := param{name: str(pm["name"]), in: str(pm["in"]), typ: str(pm["type"]), required: pm["required"] == true}
				pr.enum, _ = pm["enum"].([]any)
				if pr.in == "body" {
					o.body, _ = pm["schema"].(map[string]any)
				}
				o.params = append(o.params, pr)
			}
			if rs, ok := op["responses"].(map[string]any); ok {
				o.resp = map[string]any{}
				for code, r := range rs {
					if rm, ok := r.(map[string]any); ok {
						o.resp[code] = rm["schema"]
					}
				}
			}
			c.ops = append(c.ops, o)
		}
	}
	return c, nil
}

func str(v any) string { s, _ := v.(string); return s }

// find returns the operation for method and path (literal segments win
// over parameters) and the path parameters' values.
func (c *Contract) find(method, path string) (*operation, map[string]string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	var best *operation
	var bestVals map[string]string
	bestLiteral := -1
	for i := range c.ops {
		o := &c.ops[i]
		if o.method != method || len(o.segments) != len(segs) {
			continue
		}
		vals := map[string]string{}
		literal, ok := 0, true
		for j, s := range o.segments {
			if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
				if segs[j] == "" {
					ok = false
					break
				}
				vals[strings.Trim(s, "{}")] = segs[j]
				continue
			}
			if s != segs[j] {
				ok = false
				break
			}
			literal++
		}
		if ok && literal > bestLiteral {
			best, bestVals, bestLiteral = o, vals, literal
		}
	}
	return best, bestVals
}

// Has reports whether the contract has an operation for method and a
// path template such as /api/hosts/{hostid}.
func (c *Contract) Has(method, template string) bool {
	segs := strings.Split(strings.Trim(template, "/"), "/")
	return slices.ContainsFunc(c.ops, func(o operation) bool { return o.method == method && slices.Equal(o.segments, segs) })
}

// CheckRequest checks a request against the contract: a known operation,
// its required path and query parameters with the right types and enums,
// no unknown query parameters, and a body valid for the body schema.
func (c *Contract) CheckRequest(method, rawPath string, query url.Values, body []byte) error {
	op, vals := c.find(method, rawPath)
	if op == nil {
		return fmt.Errorf("%s %s: no such operation in the contract", method, rawPath)
	}
	name := method + " /" + strings.Join(op.segments, "/")
	known := map[string]bool{}
	for _, p := range op.params {
		var v string
		var present bool
		switch p.in {
		case "path":
			v, present = vals[p.name]
		case "query":
			known[p.name] = true
			present = query.Has(p.name)
			v = query.Get(p.name)
		case "body":
			if p.required && len(body) == 0 {
				return fmt.Errorf("%s: the body is required", name)
			}
			continue
		default:
			continue
		}
		if !present {
			if p.required {
				return fmt.Errorf("%s: %s parameter %q is required", name, p.in, p.name)
			}
			continue
		}
		if err := checkScalar(p.typ, p.enum, v); err != nil {
			return fmt.Errorf("%s: %s parameter %q: %w", name, p.in, p.name, err)
		}
	}
	for k := range query {
		if !known[k] {
			return fmt.Errorf("%s: unknown query parameter %q", name, k)
		}
	}
	if op.body == nil {
		if len(body) > 0 {
			return fmt.Errorf("%s: takes no body", name)
		}
		return nil
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("%s: body is not JSON: %w", name, err)
	}
	if err := c.checkValue(op.body, v, "body"); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// CheckResponse checks a response body against the operation's schema for
// its status (the test server's answers must be valid too).
func (c *Contract) CheckResponse(method, rawPath string, status int, body []byte) error {
	op, _ := c.find(method, rawPath)
	if op == nil {
		return fmt.Errorf("%s %s: no such operation", method, rawPath)
	}
	schema, ok := op.resp[strconv.Itoa(status)]
	if !ok {
		return fmt.Errorf("%s %s: status %d is not in the contract", method, rawPath, status)
	}
	sm, _ := schema.(map[string]any)
	if sm == nil {
		return nil
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("%s %s: response is not JSON: %w", method, rawPath, err)
	}
	return c.checkValue(sm, v, "response")
}

func checkScalar(typ string, enum []any, v string) error {
	switch typ {
	case "integer":
		if _, err := strconv.ParseInt(v, 10, 64); err != nil {
			return fmt.Errorf("%q is not an integer", v)
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

// looseEnums are definitions whose enum in swagger.yaml lists only a
// special value while the server takes any name: schema.NetworkID says
// [all_networks] but every network-scoped call carries a network name.
var looseEnums = map[string]bool{"schema.NetworkID": true}

// checkValue checks a decoded JSON value against a schema.
func (c *Contract) checkValue(schema map[string]any, v any, at string) error {
	if ref := str(schema["$ref"]); ref != "" {
		name := strings.TrimPrefix(ref, "#/definitions/")
		def, ok := c.defs[name].(map[string]any)
		if !ok {
			return fmt.Errorf("%s: unknown definition %s", at, ref)
		}
		if looseEnums[name] {
			def = map[string]any{"type": def["type"]}
		}
		return c.checkValue(def, v, at)
	}
	if all, ok := schema["allOf"].([]any); ok {
		for _, s := range all {
			if sm, ok := s.(map[string]any); ok {
				if err := c.checkValue(sm, v, at); err != nil {
					return err
				}
			}
		}
	}
	if v == nil {
		return nil // Go's encoders write null for empty slices and maps
	}
	switch typ := str(schema["type"]); typ {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %T", at, v)
		}
		props, _ := schema["properties"].(map[string]any)
		req, _ := schema["required"].([]any)
		for _, r := range req {
			if _, ok := m[str(r)]; !ok {
				return fmt.Errorf("%s: required field %q is missing", at, str(r))
			}
		}
		extra, _ := schema["additionalProperties"].(map[string]any)
		for k, fv := range m {
			ps, ok := props[k].(map[string]any)
			switch {
			case ok:
				if err := c.checkValue(ps, fv, at+"."+k); err != nil {
					return err
				}
			case extra != nil:
				if err := c.checkValue(extra, fv, at+"."+k); err != nil {
					return err
				}
			case props != nil:
				return fmt.Errorf("%s: field %q is not in the schema", at, k)
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %T", at, v)
		}
		items, _ := schema["items"].(map[string]any)
		for i, x := range a {
			if items != nil {
				if err := c.checkValue(items, x, fmt.Sprintf("%s[%d]", at, i)); err != nil {
					return err
				}
			}
		}
	case "string":
		if _, ok := v.(string); !ok {
			return fmt.Errorf("%s: want a string, got %T", at, v)
		}
	case "integer":
		f, ok := v.(float64)
		if !ok || f != float64(int64(f)) {
			return fmt.Errorf("%s: want an integer, got %v", at, v)
		}
	case "number":
		if _, ok := v.(float64); !ok {
			return fmt.Errorf("%s: want a number, got %T", at, v)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %T", at, v)
		}
	}
	if enum, ok := schema["enum"].([]any); ok {
		if !slices.ContainsFunc(enum, func(e any) bool { return fmt.Sprint(e) == fmt.Sprint(v) }) {
			return fmt.Errorf("%s: %v is not one of %v", at, v, enum)
		}
	}
	return nil
}
