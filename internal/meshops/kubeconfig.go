package meshops

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kubeconfig is a loaded kubeconfig: the contexts clusters are opened by.
type Kubeconfig struct {
	rules  *clientcmd.ClientConfigLoadingRules
	config *clientcmdapi.Config
	// files are the files it was read from, for messages.
	files []string
}

// LoadKubeconfig reads the kubeconfig at path or, when path is empty, the
// way kubectl does: the files in $KUBECONFIG, else ~/.kube/config. A
// kubeconfig that does not exist or has no contexts is an error saying
// where it looked.
func LoadKubeconfig(path string) (*Kubeconfig, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	var files []string
	for _, f := range rules.GetLoadingPrecedence() {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		}
	}
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w; pass an existing file with --kubeconfig", path, err)
		}
		files = []string{path}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no kubeconfig found (looked for %s); pass one with --kubeconfig or set KUBECONFIG", strings.Join(rules.GetLoadingPrecedence(), ", "))
	}
	cfg, err := rules.Load()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", strings.Join(files, ", "), err)
	}
	if len(cfg.Contexts) == 0 {
		return nil, fmt.Errorf("kubeconfig %s has no contexts; add the clusters to it (e.g. with `kubectl config set-context`) or pass another with --kubeconfig", strings.Join(files, ", "))
	}
	return &Kubeconfig{rules: rules, config: cfg, files: files}, nil
}

// Contexts returns the kubeconfig's context names, sorted.
func (k *Kubeconfig) Contexts() []string { return slices.Sorted(maps.Keys(k.config.Contexts)) }

// CurrentContext is the kubeconfig's current context; it may be empty.
func (k *Kubeconfig) CurrentContext() string { return k.config.CurrentContext }

// ErrUnknownContext is wrapped by Cluster's error for a context the
// kubeconfig does not have.
var ErrUnknownContext = errors.New("unknown context")

// Cluster opens the cluster of a context; an empty context means the
// current one.
func (k *Kubeconfig) Cluster(context string) (*Cluster, error) {
	if context == "" {
		context = k.config.CurrentContext
		if context == "" {
			return nil, fmt.Errorf("no --context given and kubeconfig %s has no current context; pick one of: %s", strings.Join(k.files, ", "), strings.Join(k.Contexts(), ", "))
		}
	}
	if _, ok := k.config.Contexts[context]; !ok {
		return nil, fmt.Errorf("%w %q: kubeconfig %s has no such context; available contexts: %s", ErrUnknownContext, context, strings.Join(k.files, ", "), strings.Join(k.Contexts(), ", "))
	}
	rc, err := clientcmd.NewNonInteractiveClientConfig(*k.config, context, &clientcmd.ConfigOverrides{}, k.rules).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("context %q: %w", context, err)
	}
	return NewCluster(context, rc)
}

// Clusters opens the clusters of several contexts, failing on the first
// that cannot be opened; nothing is contacted yet.
func (k *Kubeconfig) Clusters(contexts []string) ([]*Cluster, error) {
	out := make([]*Cluster, 0, len(contexts))
	for _, name := range contexts {
		c, err := k.Cluster(name)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
