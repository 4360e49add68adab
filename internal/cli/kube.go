package cli

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

// kubeFlags are the flags of commands that act on kubeconfig contexts.
type kubeFlags struct {
	kubeconfig string
	context    string
}

// addKubeFlags adds --kubeconfig and --context, with completion of
// context names from the kubeconfig.
func addKubeFlags(cmd *cobra.Command, f *kubeFlags, contextUsage string) {
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
	cmd.Flags().StringVar(&f.context, "context", "", contextUsage+" (default: the kubeconfig's current context)")
	_ = cmd.MarkFlagFilename("kubeconfig")
	_ = cmd.RegisterFlagCompletionFunc("context", completeContexts)
}

// load reads the kubeconfig.
func (f *kubeFlags) load() (*meshops.Kubeconfig, error) {
	return meshops.LoadKubeconfig(f.kubeconfig)
}

// completeContexts completes a context name, or the last of a
// comma-separated list of them, from the kubeconfig named by --kubeconfig.
func completeContexts(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	path, _ := cmd.Flags().GetString("kubeconfig")
	kc, err := meshops.LoadKubeconfig(path)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	done := ""
	if i := strings.LastIndex(toComplete, ","); i >= 0 {
		done = toComplete[:i+1]
	}
	var out []string
	for _, c := range kc.Contexts() {
		if strings.HasPrefix(done+c, toComplete) {
			out = append(out, done+c)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeWords completes from a fixed list.
func completeWords[T ~string](words []T) cobra.CompletionFunc {
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = string(w)
	}
	return cobra.FixedCompletions(out, cobra.ShellCompDirectiveNoFileComp)
}
