package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/meshops"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

func newEnableCommand(o *Options) *cobra.Command {
	var (
		kf   kubeFlags
		opts meshops.EnableOptions
	)
	cmd := &cobra.Command{
		Use:   "enable",
		Short: "Prepare a cluster for the mesh: its CA, certificates and identity",
		Long: `enable prepares one cluster for the mesh, in namespace isthmus-system:
the cluster's mesh CA (Secret isthmus-ca; an existing CA is always kept),
the mesh apiserver's server certificate, the admin and local client
certificates, the isthmus.dev CRDs (MeshNetworkPolicy, and MeshAgent,
which agents report their status in), the isthmus-config ConfigMap with
the cluster's name and ID, and the cluster's own entry in the
isthmus-clustermesh Secret, which its agents read their own cluster's
state with. It needs cluster-admin rights, for the CRDs.

The cluster name and ID must be unique among the clusters you connect.
An enabled cluster keeps its name and ID: enable refuses other values.
Running enable again changes nothing, except to renew certificates that
are due and to add server names.

The server certificate is valid for the in-cluster Service
isthmus-apiserver.isthmus-system.svc (and its shorter forms), for
loopback, for the host of every --mesh-endpoint and for every
--server-san.`,
		Example: `  # Enable the cluster of context kind-east as cluster "east" with ID 1
  isthmus enable --context kind-east --cluster-name east --cluster-id 1 \
      --mesh-endpoint https://172.18.0.10:32379

  # A mesh of up to 511 clusters (every cluster must use the same value)
  isthmus enable --context prod-eu --cluster-name eu --cluster-id 300 \
      --max-connected-clusters 511 --mesh-endpoint https://mesh.eu.example.com:2379

  # See what would change, without writing
  isthmus enable --context kind-east --cluster-name east --cluster-id 1 --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kc, err := kf.load()
			if err != nil {
				return err
			}
			c, err := kc.Cluster(kf.context)
			if err != nil {
				return err
			}
			res, err := meshops.Enable(cmd.Context(), c, opts)
			if err != nil {
				return err
			}
			printEnable(cmd.OutOrStdout(), res, opts.DryRun)
			return nil
		},
	}
	addKubeFlags(cmd, &kf, "kubeconfig context of the cluster to enable")
	f := cmd.Flags()
	f.StringVar(&opts.ClusterName, "cluster-name", "", "the cluster's name in the mesh: lower-case letters, digits and '-', at most 32 characters (required)")
	f.Uint32Var(&opts.ClusterID, "cluster-id", 0, "the cluster's ID in the mesh, unique among connected clusters: 1-255, or 1-511 with --max-connected-clusters 511 (required)")
	f.Uint32Var(&opts.MaxConnectedClusters, "max-connected-clusters", protocol.MaxConnectedClusters255, "how many clusters the mesh may hold: 255 or 511, the same on every cluster")
	f.StringSliceVar(&opts.MeshEndpoints, "mesh-endpoint", nil, "https URL at which the other clusters reach this cluster's mesh apiserver (repeatable; default: keep what is published)")
	f.StringSliceVar(&opts.ServerSANs, "server-san", nil, "another DNS name or IP address for the server certificate (repeatable)")
	f.BoolVar(&opts.DryRun, "dry-run", false, "check and show what would change, without writing")
	_ = cmd.MarkFlagRequired("cluster-name")
	_ = cmd.MarkFlagRequired("cluster-id")
	_ = cmd.RegisterFlagCompletionFunc("max-connected-clusters", cobra.FixedCompletions([]string{"255", "511"}, cobra.ShellCompDirectiveNoFileComp))
	for _, n := range []string{"cluster-name", "cluster-id", "mesh-endpoint", "server-san"} {
		_ = cmd.RegisterFlagCompletionFunc(n, cobra.NoFileCompletions)
	}
	return cmd
}

func printEnable(w io.Writer, res *meshops.EnableResult, dryRun bool) {
	cfg := res.Config
	id := fmt.Sprintf("cluster %q (ID %d, max-connected-clusters %d) in context %q", cfg.ClusterName, cfg.ClusterID, cfg.MaxConnectedClusters, res.Context)
	switch {
	case len(res.Changes) == 0:
		fmt.Fprintf(w, "%s is already enabled; nothing changed.\n", capitalize(id))
	case dryRun:
		fmt.Fprintf(w, "Dry run: enabling %s would:\n", id)
	default:
		fmt.Fprintf(w, "Enabled %s:\n", id)
	}
	printChanges(w, res.Changes)
	printNotes(w, res.Notes)
	if len(res.Changes) > 0 && !dryRun {
		fmt.Fprintf(w, "Next: install the mesh apiserver and agents, then connect it:\n  isthmus connect --context %s --destination-context <other context>\n", res.Context)
	}
}

func printChanges(w io.Writer, changes []meshops.Change) {
	for _, c := range changes {
		fmt.Fprintf(w, "  %s\n", c)
	}
}

func printNotes(w io.Writer, notes []string) {
	for _, n := range notes {
		fmt.Fprintf(w, "Note: %s\n", n)
	}
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
