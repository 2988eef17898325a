package contract

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// check validates a decoded JSON value (encoding/json types) against a
// schema. at is the field path used in violations.
func (c *Contract) check(schema map[string]any, v any, at string, strict bool) error {
	return c.checkDepth(schema, v, at, strict, 0)
}

func (c *Contract) checkDepth(schema map[string]any, v any, at string, strict bool, depth int) error {
	if depth > 64 {
		return &Violation{Field: at, Msg: "schema nests too deep (a $ref cycle?)"}
	}
	fail := func(format string, args ...any) error {
		return &Violation{Field: at, Msg: fmt.Sprintf(format, args...)}
	}
	if ref := str(schema["$ref"]); ref != "" {
		name, ok := strings.CutPrefix(ref, "#/definitions/")
		def, _ := c.defs[name].(map[string]any)
		if !ok || def == nil {
			return fail("unresolvable $ref %q", ref)
		}
		if c.LooseEnums[name] {
			def = without(def, "enum")
		}
		return c.checkDepth(def, v, at, strict, depth+1)
	}
	if all, ok := schema["allOf"].([]any); ok {
		for _, s := range all {
			sm, _ := s.(map[string]any)
			if err := c.checkDepth(sm, v, at, strict, depth+1); err != nil {
				return err
			}
		}
	}
	typ := str(schema["type"])
	if v == nil {
		if typ == "" {
			return nil
		}
		return fail("null, want %s", a(typ))
	}
	switch typ {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fail("%s, want an object", describe(v))
		}
		return c.checkObject(schema, m, at, strict, depth)
	case "array":
		arr, ok := v.([]any)
		if !ok {
			return fail("%s, want an array", describe(v))
		}
		items, _ := schema["items"].(map[string]any)
		for i, x := range arr {
			if items == nil {
				break
			}
			if err := c.checkDepth(items, x, fmt.Sprintf("%s[%d]", at, i), strict, depth+1); err != nil {
				return err
			}
		}
	case "string":
		s, ok := v.(string)
		if !ok {
			return fail("%s, want a string", describe(v))
		}
		n := utf8.RuneCountInString(s)
		if lo, ok := num(schema["minLength"]); ok && float64(n) < lo {
			return fail("%q is shorter than %v characters", s, lo)
		}
		if hi, ok := num(schema["maxLength"]); ok && float64(n) > hi {
			return fail("%q is longer than %v characters", s, hi)
		}
	case "integer", "number":
		f, ok := v.(float64)
		if !ok {
			return fail("%s, want %s", describe(v), a(typ))
		}
		if typ == "integer" && f != math.Trunc(f) {
			return fail("%v, want an integer", f)
		}
		switch str(schema["format"]) {
		case "int32":
			if f < math.MinInt32 || f > math.MaxInt32 {
				return fail("%v does not fit int32", f)
			}
		case "int64":
			if f < math.MinInt64 || f > math.MaxInt64 {
				return fail("%v does not fit int64", f)
			}
		}
		if lo, ok := num(schema["minimum"]); ok && f < lo {
			return fail("%v is below the minimum %v", f, lo)
		}
		if hi, ok := num(schema["maximum"]); ok && f > hi {
			return fail("%v is above the maximum %v", f, hi)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fail("%s, want a boolean", describe(v))
		}
	case "":
		// any value
	default:
		return fail("the schema has an unknown type %q", typ)
	}
	if enum, ok := schema["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return sameJSON(e, v) }) {
		return fail("%s is not one of %v", describe(v), enum)
	}
	return nil
}

func (c *Contract) checkObject(schema map[string]any, m map[string]any, at string, strict bool, depth int) error {
	props, _ := schema["properties"].(map[string]any)
	req, _ := schema["required"].([]any)
	for _, r := range req {
		if _, ok := m[str(r)]; !ok {
			return &Violation{Field: at, Msg: fmt.Sprintf("required field %q is missing", str(r))}
		}
	}
	extra, hasExtra := schema["additionalProperties"]
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same field first every time
	for _, k := range keys {
		field := at + "." + k
		if ps, ok := props[k].(map[string]any); ok {
			if err := c.checkDepth(ps, m[k], field, strict, depth+1); err != nil {
				return err
			}
			continue
		}
		switch x := extra.(type) {
		case map[string]any:
			if err := c.checkDepth(x, m[k], field, strict, depth+1); err != nil {
				return err
			}
			continue
		case bool:
			if x {
				continue
			}
			return &Violation{Field: field, Msg: "the schema allows no additional fields"}
		}
		if !hasExtra && strict && props != nil {
			return &Violation{Field: field, Msg: "not a field of the schema"}
		}
	}
	return nil
}

func without(m map[string]any, key string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if k != key {
			out[k] = v
		}
	}
	return out
}

// num reads a numeric schema keyword (YAML gives int or float64).
func num(v any) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// sameJSON compares an enum member from YAML with a JSON value.
func sameJSON(e, v any) bool {
	if f, ok := v.(float64); ok {
		n, isNum := num(e)
		return isNum && n == f
	}
	return e == v
}

func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("%q", x)
	case float64:
		return fmt.Sprintf("%v", x)
	case bool:
		return fmt.Sprintf("%v", x)
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func a(typ string) string {
	switch typ {
	case "object", "array", "integer":
		return "an " + typ
	}
	return "a " + typ
}
