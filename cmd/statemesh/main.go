// Command statemesh is the StateMesh controller, node agent, lab and admin
// CLI in one binary. All logic lives in internal/cli.
package main

import (
	"os"

	"github.com/statemesh/statemesh/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
