package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
)

// readInput reads a file, or standard input for "-".
func (e *env) readInput(path string) ([]byte, error) {
	if path == "" {
		return nil, usagef("no spec given: use -f mesh.yaml (or -f - for standard input)")
	}
	if path == "-" {
		return io.ReadAll(io.LimitReader(e.stdin, spec.MaxSpecBytes+1))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Say how large a file is rather than how much was read of it.
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > spec.MaxSpecBytes {
		return nil, fmt.Errorf("%s is %s bytes; a spec may have at most %s (4 MiB)", path, spec.Count(uint64(fi.Size())), spec.Count(spec.MaxSpecBytes))
	}
	return io.ReadAll(io.LimitReader(f, spec.MaxSpecBytes+1))
}

// loadSpec reads, defaults and validates a spec file.
func (e *env) loadSpec(path string) (*spec.Mesh, error) {
	data, err := e.readInput(path)
	if err != nil {
		return nil, err
	}
	m, err := spec.Parse(data)
	if err != nil {
		return nil, specError{path: path, err: err}
	}
	return m, nil
}

// specError prints spec errors one per line, prefixed with the file.
type specError struct {
	path string
	err  error
}

func (s specError) Unwrap() error { return s.err }

func (s specError) Error() string {
	if s.path == "-" {
		s.path = "<stdin>"
	}
	var es spec.Errors
	if !errors.As(s.err, &es) {
		return fmt.Sprintf("%s: %v", s.path, s.err)
	}
	var b strings.Builder
	if len(es) == 1 {
		fmt.Fprintf(&b, "%s: 1 error", s.path)
	} else {
		fmt.Fprintf(&b, "%s: %d errors", s.path, len(es))
	}
	for _, fe := range es {
		b.WriteString("\n  ")
		if fe.Line > 0 {
			fmt.Fprintf(&b, "line %d: ", fe.Line)
		}
		if fe.Path != "" {
			b.WriteString(fe.Path + ": ")
		}
		b.WriteString(fe.Msg)
		if fe.Fix != "" {
			b.WriteString("\n      fix: " + fe.Fix)
		}
	}
	return b.String()
}

// readPlanState reads a previous plan written by `plan -o json`.
func (e *env) readPlanState(path string) (*plan.Plan, error) {
	if path == "" {
		return nil, nil
	}
	data, err := e.readInput(path)
	if err != nil {
		return nil, fmt.Errorf("reading previous plan: %w", err)
	}
	p, err := plan.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("reading previous plan %s: %w", path, err)
	}
	return p, nil
}
