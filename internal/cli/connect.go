package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

// connectFlags are the flags connect and disconnect share.
type connectFlags struct {
	kube         kubeFlags
	destinations []string
	mode         string
}

func (f *connectFlags) add(cmd *cobra.Command, verb string, required bool) {
	addKubeFlags(cmd, &f.kube, "kubeconfig context of the source cluster")
	cmd.Flags().StringSliceVar(&f.destinations, "destination-context", nil, "kubeconfig context(s) of the cluster(s) to "+verb+", comma-separated or repeated (required)")
	cmd.Flags().StringVar(&f.mode, "connection-mode", string(meshops.Bidirectional), "bidirectional: source and each destination read each other; unicast: the source reads each destination; mesh: every cluster given reads every other")
	if required {
		_ = cmd.MarkFlagRequired("destination-context")
	}
	_ = cmd.RegisterFlagCompletionFunc("destination-context", completeContexts)
	_ = cmd.RegisterFlagCompletionFunc("connection-mode", completeWords(meshops.ConnectionModes))
}

// clusters opens the source and destination clusters and parses the mode;
// it contacts no cluster.
func (f *connectFlags) clusters() (*meshops.Cluster, []*meshops.Cluster, meshops.ConnectionMode, error) {
	mode, err := meshops.ParseConnectionMode(f.mode)
	if err != nil {
		return nil, nil, "", fmt.Errorf("--connection-mode: %w", err)
	}
	var dests []string
	for _, d := range f.destinations {
		if d = strings.TrimSpace(d); d != "" {
			dests = append(dests, d)
		}
	}
	if len(dests) == 0 {
		return nil, nil, "", errors.New("--destination-context names no context")
	}
	kc, err := f.kube.load()
	if err != nil {
		return nil, nil, "", err
	}
	src, err := kc.Cluster(f.kube.context)
	if err != nil {
		return nil, nil, "", err
	}
	for _, d := range dests {
		if d == src.Context() {
			return nil, nil, "", fmt.Errorf("context %q is both --context and a --destination-context: a cluster cannot be connected to itself", d)
		}
	}
	dst, err := kc.Clusters(dests)
	if err != nil {
		return nil, nil, "", err
	}
	return src, dst, mode, nil
}

func newConnectCommand(o *Options) *cobra.Command {
	var (
		f            connectFlags
		opts         meshops.ConnectOptions
		grantTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "connect",
		Short: "Connect clusters so that their agents read each other's mesh state",
		Long: `connect connects the cluster of --context with the clusters of
--destination-context. For each direction "X reads Y" it issues a client
certificate (user remote-X) signed by Y's mesh CA, grants X read access in
Y's ConfigMap isthmus-remote-readers, and writes Y's endpoints, CA and that
certificate into X's Secret isthmus-clustermesh, which X's agents read.

Before changing anything it checks that the clusters are enabled, have
distinct names and IDs, the same max-connected-clusters and disjoint pod
CIDRs, and that each cluster that is read answers at its published mesh
endpoints as itself (connecting from this machine with a certificate of
its CA). If any check fails, nothing is written.

It writes the grants first, then waits (--grant-timeout) until each
cluster's mesh apiserver has created the granted etcd user, reading with
the very certificate it issued, and only then writes the entries, so the
agents' first read succeeds. If a grant does not take effect in time, no
entry is written, connect fails and says what to check; the grants it
wrote are harmless, and running connect again completes the connection.

Running connect again changes nothing while the certificates are valid
for more than a third of their lifetime; after that it renews them.`,
		Example: `  # east and west read each other
  isthmus connect --context kind-east --destination-context kind-west

  # east reads west and north; they do not read east
  isthmus connect --context kind-east --destination-context kind-west,kind-north --connection-mode unicast

  # every cluster reads every other
  isthmus connect --context kind-east --destination-context kind-west,kind-north --connection-mode mesh

  # then wait until every agent is connected and synced
  isthmus status --context kind-east --wait`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case grantTimeout < 0:
				return fmt.Errorf("--grant-timeout %s is negative; give 0 to write the entries without waiting", grantTimeout)
			case grantTimeout == 0:
				opts.GrantTimeout = -1
			default:
				opts.GrantTimeout = grantTimeout
			}
			src, dst, mode, err := f.clusters()
			if err != nil {
				return err
			}
			opts.Mode = mode
			opts.Progress = progressTo(cmd.ErrOrStderr())
			res, err := meshops.Connect(cmd.Context(), src, dst, opts)
			if res != nil {
				printNotes(cmd.ErrOrStderr(), res.Notes)
			}
			if err != nil {
				return err
			}
			printResult(cmd.OutOrStdout(), res, "Connected", "reads", opts.DryRun)
			if len(res.Changes) > 0 && !opts.DryRun {
				fmt.Fprintf(cmd.OutOrStdout(), "Wait until every agent is connected and synced:\n  isthmus status --context %s --wait\n", src.Context())
			}
			return nil
		},
	}
	f.add(cmd, "connect with", true)
	fl := cmd.Flags()
	fl.BoolVar(&opts.SkipEndpointCheck, "skip-endpoint-check", false, "do not dial the mesh endpoints from this machine before writing. For split-horizon networks, where the clusters reach each other at addresses this machine cannot; the risk: a wrong or unreachable endpoint is then only seen later, in the output of isthmus status. Connect then does not wait for the grants either (--grant-timeout)")
	fl.DurationVar(&opts.EndpointTimeout, "endpoint-timeout", meshops.DefaultEndpointTimeout, "how long to wait for each mesh endpoint to answer")
	fl.DurationVar(&grantTimeout, "grant-timeout", meshops.DefaultGrantTimeout, "how long to wait, after granting read access, until the mesh apiserver of each cluster that is read lets the reader in; the entries are written only then, and not at all when the wait gives up. 0: do not wait (write the entries right after the grants). There is no wait with --skip-endpoint-check or --dry-run")
	fl.BoolVar(&opts.DryRun, "dry-run", false, "check and show what would change, without writing")
	return cmd
}

func newDisconnectCommand(o *Options) *cobra.Command {
	var (
		f      connectFlags
		opts   meshops.DisconnectOptions
		forget []string
	)
	cmd := &cobra.Command{
		Use:   "disconnect",
		Short: "Disconnect clusters: their agents withdraw each other's state",
		Long: `disconnect undoes connect for the given clusters and connection mode. For
each direction "X reads Y" it removes Y's entry from X's Secret
isthmus-clustermesh, whereupon X's agents withdraw Y's services, nodes and
identities, and then X's grant from Y's ConfigMap isthmus-remote-readers,
whereupon Y's mesh apiserver deletes X's etcd user: X's certificate is
refused from then on, even while it is still valid (a watch opened before
lasts until its connection ends: etcd checks permissions when a watch
starts; X's agents have closed theirs, as the entry goes first). Each
cluster's own entry stays.

For a cluster that is gone, or whose context you no longer have, use
--remote-cluster with its cluster name: only the cluster of --context is
changed, and the gone cluster's grant, if it still exists, stays.`,
		Example: `  # east and west stop reading each other
  isthmus disconnect --context kind-east --destination-context kind-west

  # only east stops reading west
  isthmus disconnect --context kind-east --destination-context kind-west --connection-mode unicast

  # the cluster named "west" was deleted: east stops reading it
  isthmus disconnect --context kind-east --remote-cluster west`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Progress = progressTo(cmd.ErrOrStderr())
			if len(forget) > 0 {
				kc, err := f.kube.load()
				if err != nil {
					return err
				}
				c, err := kc.Cluster(f.kube.context)
				if err != nil {
					return err
				}
				res, err := meshops.Forget(cmd.Context(), c, forget, opts)
				if err != nil {
					return err
				}
				printResult(cmd.OutOrStdout(), res, "Disconnected", "no longer reads", opts.DryRun)
				return nil
			}
			src, dst, mode, err := f.clusters()
			if err != nil {
				return err
			}
			opts.Mode = mode
			res, err := meshops.Disconnect(cmd.Context(), src, dst, opts)
			if err != nil {
				return err
			}
			printResult(cmd.OutOrStdout(), res, "Disconnected", "no longer reads", opts.DryRun)
			return nil
		},
	}
	f.add(cmd, "disconnect from", false)
	cmd.Flags().StringSliceVar(&forget, "remote-cluster", nil, "cluster name(s) to stop reading, for clusters whose context is gone; only --context's cluster is changed")
	cmd.Flags().BoolVar(&opts.DryRun, "dry-run", false, "show what would change, without writing")
	cmd.MarkFlagsOneRequired("destination-context", "remote-cluster")
	cmd.MarkFlagsMutuallyExclusive("destination-context", "remote-cluster")
	_ = cmd.RegisterFlagCompletionFunc("remote-cluster", cobra.NoFileCompletions)
	return cmd
}

func printResult(w io.Writer, res *meshops.Result, done, verb string, dryRun bool) {
	switch {
	case len(res.Changes) == 0:
		fmt.Fprintln(w, "Nothing to change: already so.")
	case dryRun:
		fmt.Fprintln(w, "Dry run: would write")
		printChanges(w, res.Changes)
	default:
		fmt.Fprintf(w, "%s:\n", done)
		printChanges(w, res.Changes)
	}
	for _, c := range res.Connections {
		target := c.Target
		if c.TargetContext != "" {
			target += " (context " + c.TargetContext + ")"
		}
		fmt.Fprintf(w, "  %s (context %s) %s %s\n", c.Reader, c.ReaderContext, verb, target)
	}
}

// progressTo returns a progress function printing to w.
func progressTo(w io.Writer) func(string) {
	start := time.Now()
	return func(msg string) {
		fmt.Fprintf(w, "[%4.1fs] %s\n", time.Since(start).Seconds(), msg)
	}
}
