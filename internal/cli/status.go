package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

// Output formats of status.
var statusFormats = []string{"text", "json", "yaml"}

func newStatusCommand(o *Options) *cobra.Command {
	var (
		kf      kubeFlags
		wait    bool
		waitFor time.Duration
		output  string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show which clusters a cluster's agents read, and how far they got",
		Long: `status shows a cluster's place in the mesh (its isthmus-config), the
clusters it is configured to read (its isthmus-clustermesh Secret, its own
entry included), which clusters may read it, and, per cluster, how many of
its agents are connected and synced, as the agents report it in their
MeshAgent objects. Errors are grouped by message, with the nodes that
report them and a hint on what to do.

The cluster is ready when at least one agent reports, none has gone
silent, and every configured cluster is connected and synced on every
agent. With --wait, status polls until then or until --wait-duration
passes, and exits non-zero with the reasons if it is not ready by then.`,
		Example: `  isthmus status --context kind-east

  # wait up to two minutes for every agent to be connected and synced
  isthmus status --context kind-east --wait --wait-duration 2m

  # for scripts
  isthmus status --context kind-east -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			render, err := statusRenderer(output)
			if err != nil {
				return err
			}
			kc, err := kf.load()
			if err != nil {
				return err
			}
			c, err := kc.Cluster(kf.context)
			if err != nil {
				return err
			}
			if !wait {
				r, err := meshops.Status(cmd.Context(), c, meshops.StatusOptions{})
				if err != nil {
					return err
				}
				return render(cmd.OutOrStdout(), r)
			}
			r, waitErr := meshops.WaitReady(cmd.Context(), c, meshops.WaitOptions{
				Timeout:  waitFor,
				Progress: waitProgress(cmd.ErrOrStderr()),
			})
			if r != nil {
				if err := render(cmd.OutOrStdout(), r); err != nil {
					return err
				}
			}
			return waitErr
		},
	}
	addKubeFlags(cmd, &kf, "kubeconfig context of the cluster")
	f := cmd.Flags()
	f.BoolVar(&wait, "wait", false, "wait until every configured cluster is connected and synced on every agent")
	f.DurationVar(&waitFor, "wait-duration", 5*time.Minute, "how long --wait waits before giving up")
	f.StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", completeWords(statusFormats))
	return cmd
}

func statusRenderer(format string) (func(io.Writer, *meshops.StatusReport) error, error) {
	switch format {
	case "text", "":
		return func(w io.Writer, r *meshops.StatusReport) error { return renderStatusText(w, r) }, nil
	case "json":
		return func(w io.Writer, r *meshops.StatusReport) error {
			b, err := json.MarshalIndent(r, "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(w, "%s\n", b)
			return err
		}, nil
	case "yaml":
		return func(w io.Writer, r *meshops.StatusReport) error {
			b, err := yaml.Marshal(r)
			if err != nil {
				return err
			}
			_, err = w.Write(b)
			return err
		}, nil
	}
	return nil, fmt.Errorf("--output %q is not one of text, json, yaml", format)
}

// waitProgress prints a line whenever the summary changes, and at least
// every 15 seconds, so a long wait shows it is alive.
func waitProgress(w io.Writer) func(*meshops.StatusReport, error) {
	start := time.Now()
	var last string
	var lastAt time.Time
	return func(r *meshops.StatusReport, err error) {
		line := ""
		if err != nil {
			line = "cannot read the status yet: " + err.Error()
		} else {
			line = statusSummary(r)
		}
		if line == last && time.Since(lastAt) < 15*time.Second {
			return
		}
		last, lastAt = line, time.Now()
		fmt.Fprintf(w, "[%3.0fs] %s\n", time.Since(start).Seconds(), line)
	}
}
