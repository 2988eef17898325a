package spec

import (
	"fmt"
	"strings"
)

// FieldError is one mistake in a spec: where it is and how to fix it.
type FieldError struct {
	// Path is the field path, e.g. regions[3].clusters[1].podCIDRs[0].
	Path string `json:"path"`
	// Line is the 1-based source line, 0 when unknown.
	Line int `json:"line,omitempty"`
	// Msg says what is wrong.
	Msg string `json:"message"`
	// Fix says what to do about it, when there is a concrete fix.
	Fix string `json:"fix,omitempty"`
}

func (e FieldError) Error() string {
	var b strings.Builder
	if e.Path != "" {
		b.WriteString(e.Path)
	} else {
		b.WriteString("(document)")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Fix != "" {
		b.WriteString("; fix: ")
		b.WriteString(e.Fix)
	}
	return b.String()
}

// Errors is every mistake found in one pass. A nil or empty Errors is not
// an error; use Err to turn it into one.
type Errors []FieldError

func (es Errors) Error() string {
	if len(es) == 1 {
		return es[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d errors in spec:", len(es))
	for _, e := range es {
		b.WriteString("\n  - ")
		b.WriteString(e.Error())
	}
	return b.String()
}

// Err returns es as an error, or nil when it is empty.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

// errs collects field errors during validation.
type errs struct {
	list  Errors
	lines map[string]int
}

func (c *errs) add(path, fix, format string, args ...any) {
	fe := FieldError{Path: path, Line: c.lines[path], Msg: fmt.Sprintf(format, args...), Fix: fix}
	// A field the user did not write has a default copied from one they
	// did (a region's underlayMTU from underlay.mtu): the mistake is
	// reported once, where it was written.
	if _, written := c.lines[path]; !written && c.lines != nil {
		for _, e := range c.list {
			if e.Msg == fe.Msg && e.Fix == fe.Fix {
				return
			}
		}
	}
	c.list = append(c.list, fe)
}
