package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/doctor"
	"github.com/statemesh/statemesh/internal/plan"
	"github.com/statemesh/statemesh/internal/spec"
)

// errFindings makes doctor exit 1 when it found errors.
var errFindings = errors.New("doctor found errors")

func newDoctorCmd(e *env) *cobra.Command {
	var (
		a         adminFlags
		file      string
		values    []string
		strictish bool
	)
	cmd := &cobra.Command{
		Use:   "doctor [-f mesh.yaml] [--cilium-values PATH]...",
		Short: "Check a running mesh (or, with -f, a spec before deployment) against best practices; each finding names its fix",
		Long: `Without -f, doctor asks the controller for its spec, plan, status, nodes and the
agents' path probes, and reports: paths whose probed MTU is below the planned
one, unreachable gateways, regions with no or one healthy gateway, gateway load
imbalance, stale handshakes, clock skew, weak nodes beside sensitive segments,
quarantined nodes, plus everything the spec check finds.

With -f, it checks the spec and its plan only: encapsulation where native routing
works, Cilium WireGuard on top of the overlay, supernet headroom, single-gateway
regions, attestation gaps, clusters without kubeAPIServer.

--cilium-values checks Cilium Helm values in use (files, or directories searched
for cilium-values.yaml) against the plan's MTU.

Exit status 1 when a finding is an error (--warnings-fail: also warnings).
Thresholds and reasons: docs/best-practices.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(a.output, formatTable, formatJSON); err != nil {
				return err
			}
			var (
				m        *spec.Mesh
				p        *plan.Plan
				findings []doctor.Finding
				err      error
			)
			if file != "" {
				if m, err = e.loadSpec(file); err != nil {
					return err
				}
				if p, err = plan.Compute(m, nil); err != nil {
					return err
				}
			} else {
				c, err := a.client()
				if err != nil {
					return err
				}
				var live doctor.Live
				if live, p, err = gatherLive(cmd, c); err != nil {
					return err
				}
				m = live.Mesh
				findings = doctor.Running(live)
			}
			if m != nil && p != nil {
				findings = doctor.Merge(findings, doctor.Spec(m, p))
				for _, v := range values {
					fs, err := checkValues(m, p, v)
					if err != nil {
						return err
					}
					findings = append(findings, fs...)
				}
			} else if len(values) > 0 {
				return fmt.Errorf("--cilium-values needs a spec: the controller has none; give -f mesh.yaml")
			}
			doctor.Sort(findings)
			if a.output == formatJSON {
				if findings == nil {
					findings = []doctor.Finding{}
				}
				if err := writeJSON(e.stdout, findings); err != nil {
					return err
				}
			} else {
				printFindings(terminalSafe(e.stdout), findings)
			}
			for _, f := range findings {
				if f.Severity == doctor.Error || (strictish && f.Severity == doctor.Warning) {
					return errFindings
				}
			}
			return nil
		},
	}
	a.register(cmd, formatTable, formatJSON)
	cmd.Flags().StringVarP(&file, "file", "f", "", "check this spec before deployment instead of the running mesh")
	cmd.Flags().StringSliceVar(&values, "cilium-values", nil, "Cilium Helm values files (or directories holding cilium-values.yaml) to check against the plan")
	cmd.Flags().BoolVar(&strictish, "warnings-fail", false, "exit 1 on warnings too")
	return cmd
}

// gatherLive reads what the doctor needs from the admin API.
func gatherLive(cmd *cobra.Command, c *apiclient.Client) (doctor.Live, *plan.Plan, error) {
	ctx, cancel := callCtx(cmd)
	defer cancel()
	var l doctor.Live
	var err error
	if l.Status, err = c.Status(ctx); err != nil {
		return l, nil, err
	}
	if l.Nodes, err = c.Nodes(ctx, "", ""); err != nil {
		return l, nil, err
	}
	if l.Paths, err = c.Paths(ctx); err != nil {
		return l, nil, err
	}
	if has, err := c.ControllerHasTPM(ctx); err == nil {
		l.ControllerTPM = &has
	}
	text, err := c.Spec(ctx)
	if err != nil || strings.TrimSpace(text) == "" {
		return l, nil, nil // no spec applied yet: the live checks still run
	}
	if l.Mesh, err = spec.Parse([]byte(text)); err != nil {
		return l, nil, fmt.Errorf("the controller's spec: %w", err)
	}
	data, err := c.PlanJSON(ctx)
	if err != nil {
		return l, nil, err
	}
	p, err := plan.Decode(data)
	if err != nil {
		return l, nil, fmt.Errorf("the controller's plan: %w", err)
	}
	return l, p, nil
}

// checkValues checks one values file, or every cilium-values.yaml under
// a directory (the layout of render all).
func checkValues(m *spec.Mesh, p *plan.Plan, path string) ([]doctor.Finding, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	files := []string{path}
	if st.IsDir() {
		files = nil
		err := filepath.WalkDir(path, func(f string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && d.Name() == "cilium-values.yaml" {
				files = append(files, f)
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("%s holds no cilium-values.yaml", path)
		}
	}
	var out []doctor.Finding
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, doctor.CiliumValues(m, p, f, data)...)
	}
	return out, nil
}

func printFindings(w io.Writer, fs []doctor.Finding) {
	if len(fs) == 0 {
		fmt.Fprintln(w, "no findings")
		return
	}
	counts := map[string]int{}
	for _, f := range fs {
		counts[f.Severity]++
		fmt.Fprintf(w, "%-7s %s: %s\n", strings.ToUpper(f.Severity), f.Check, f.Subject)
		fmt.Fprintf(w, "  why:      %s\n", f.Reason)
		fmt.Fprintf(w, "  evidence: %s\n", f.Evidence)
		fmt.Fprintf(w, "  fix:      %s\n\n", f.Fix)
	}
	fmt.Fprintf(w, "%d error(s), %d warning(s), %d info\n", counts[doctor.Error], counts[doctor.Warning], counts[doctor.Info])
}
