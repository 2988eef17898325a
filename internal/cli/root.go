// Package cli owns the statemesh command line: one cobra command per
// subcommand, turning flags into calls of the packages that do the work and
// their results into tables (for people) or JSON/YAML (for scripts).
package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X .../internal/cli.Version=...".
var Version = "dev"

// Exit statuses.
const (
	ExitOK    = 0
	ExitError = 1 // the command ran and failed: invalid spec, infeasible plan, API error
	ExitUsage = 2 // the command line itself is wrong
)

// usageError marks errors in how the command was called.
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// env is what commands read and write; tests supply buffers.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// Main runs the CLI with args and returns the exit status.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRoot(e)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	fmt.Fprintln(stderr, "error:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitError
}

// CheckArgs parses a command line as Main would and runs the command's own
// flag checks, without running the command: what a deployment (the Helm
// chart, a systemd unit) passes can be checked against the real parser.
func CheckArgs(args []string) error {
	root := newRoot(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard})
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return usageError{err}
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		return err
	}
	if err := cmd.ValidateRequiredFlags(); err != nil {
		return err
	}
	if cmd.PreRunE != nil {
		return cmd.PreRunE(cmd, cmd.Flags().Args())
	}
	return nil
}

func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "statemesh",
		Short: "StateMesh: one encrypted, zero-trust WireGuard network across a fleet of Kubernetes clusters",
		Long: `StateMesh plans the addressing and MTU of a multi-region fleet, runs a WireGuard
mesh with HA regional gateways, admits nodes on TPM attestation and enforces policy.

Start with:  statemesh validate -f mesh.yaml
             statemesh plan -f mesh.yaml`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see %s --help)", err, c.CommandPath())}
	})
	root.AddCommand(
		newVersionCmd(e),
		newValidateCmd(e),
		newPlanCmd(e),
		newMTUCmd(e),
		newControllerCmd(e),
		newApplyCmd(e),
		newGetCmd(e),
		newTokenCmd(e),
		newAdminTokenCmd(e),
		newNodeCmd(e),
		newAgentCmd(e),
		newPolicyCmd(e),
		newRenderCmd(e),
		newClientCmd(e),
		newStatusCmd(e),
		newDoctorCmd(e),
		newGuardCmd(e),
		newDashboardCmd(e),
		newWireGuardGoCmd(e),
		newLabCmd(e),
		newSecretsCmd(e),
		newNetmakerCmd(e),
	)
	var setArgs func(c *cobra.Command)
	setArgs = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Args == nil {
				sub.Args = noArgs
			}
			setArgs(sub)
		}
	}
	setArgs(root)
	return root
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

func newVersionCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(e.stdout, "statemesh %s\n", Version)
			return nil
		},
	}
}
