package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/cilium"
	"github.com/statemesh/statemesh/internal/plan"
)

func newRenderCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "render",
		Short: "Render configuration for other components from the mesh spec",
	}
	cmd.AddCommand(newRenderCiliumPoliciesCmd(e))
	return cmd
}

func newRenderCiliumPoliciesCmd(e *env) *cobra.Command {
	var file, cluster, out, namespace, state string
	cmd := &cobra.Command{
		Use:   "cilium-policies",
		Short: "Write the pod-level policies (cilium.io/v2) that carry the spec's segments and rules",
		Long: `Write the pod-level policies that carry the spec's segments and rules to Cilium:
for every cluster, one CiliumClusterwideNetworkPolicy per segment whose pods
may run there (or a CiliumNetworkPolicy in --namespace), allowing the
segment's own pods (unless isolated) and the sources of the rules into it.
Pods join a segment through its podLabels (default
statemesh.dev/segment-NAME: "true"); sources name their clusters with
io.cilium.k8s.policy.cluster, so ClusterMesh applies them across clusters.
Clients of a clients segment are matched by their block of each region's
clients range. See docs/policy.md.

Without --out, every object goes to stdout as one YAML stream; with --out,
one file per cluster (REGION-CLUSTER.yaml) for kubectl apply -f.`,
		Example: `  statemesh render cilium-policies -f mesh.yaml --cluster eu-central/prod | kubectl apply -f -
  statemesh render cilium-policies -f mesh.yaml --out policies/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usagef("give the mesh spec with -f")
			}
			m, err := e.loadSpec(file)
			if err != nil {
				return err
			}
			if m.Policy == nil {
				return fmt.Errorf("%s has no policy section: there is nothing to render (without a policy the mesh allows everything)", file)
			}
			var prev *plan.Plan
			if state != "" {
				if prev, err = e.readPlanState(state); err != nil {
					return err
				}
			}
			p, err := plan.Compute(m, prev)
			if err != nil {
				return err
			}
			objs, err := cilium.Policies(m, p, cilium.Options{Cluster: cluster, Namespace: namespace})
			if err != nil {
				return err
			}
			if out == "" {
				b, err := cilium.YAML(objs)
				if err != nil {
					return err
				}
				_, err = e.stdout.Write(b)
				return err
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			files, names := cilium.Files(objs)
			for _, name := range names {
				b, err := cilium.YAML(files[name])
				if err != nil {
					return err
				}
				path := filepath.Join(out, name)
				if err := os.WriteFile(path, b, 0o644); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%s: %d policies\n", path, len(files[name]))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "mesh spec (YAML); - for stdin")
	cmd.Flags().StringVar(&cluster, "cluster", "", "only this cluster (REGION/CLUSTER)")
	cmd.Flags().StringVar(&out, "out", "", "write one file per cluster into this directory")
	cmd.Flags().StringVar(&namespace, "namespace", "", "render namespaced CiliumNetworkPolicies in this namespace instead of clusterwide ones")
	cmd.Flags().StringVar(&state, "state", "", "previous plan (JSON), so addresses stay where they are (see statemesh plan --state)")
	return cmd
}
