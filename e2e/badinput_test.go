package e2e

import (
	"maps"
	"path/filepath"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/e2e/testbed"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// TestCLIRefusesBadInput tries, on the testbed's clusters, what a new user
// might get wrong, and checks each attempt exits non-zero with a message
// naming the problem, and changes no mesh object. (The integration tests
// of internal/cli cover the cases that need specially prepared clusters:
// duplicate IDs, overlapping pod CIDRs, a cluster not enabled, an
// unreachable mesh endpoint.)
func TestCLIRefusesBadInput(t *testing.T) {
	s := newScenario(t)
	c1, c2 := s.c1, s.c2
	alias := s.aliasKubeconfig(c1, "again")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown context", []string{"connect", "--context", c1.Context, "--destination-context", "no-such-context"},
			[]string{`unknown context "no-such-context"`, "available contexts:", c2.Context}},
		{"connect to itself", []string{"connect", "--context", c1.Context, "--destination-context", c1.Context},
			[]string{"cannot be connected to itself"}},
		{"the same cluster under another context", []string{"connect", "--kubeconfig", alias, "--context", c1.Context, "--destination-context", "again"},
			[]string{`contexts "` + c1.Context + `" and "again" are the same cluster`}},
		{"re-enable with another ID", []string{"enable", "--context", c1.Context, "--cluster-name", c1.Name, "--cluster-id", "200"},
			[]string{"already enabled", "nothing was changed"}},
		{"unknown connection mode", []string{"connect", "--context", c1.Context, "--destination-context", c2.Context, "--connection-mode", "star"},
			[]string{`connection mode "star"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.meshObjectVersions(t)
			res, err := s.env.CLI(s.ctx, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			checkRefused(t, res, tc.want)
			if after := s.meshObjectVersions(t); !maps.Equal(before, after) {
				t.Errorf("mesh objects changed: %v -> %v", before, after)
			}
		})
	}
}

func checkRefused(t *testing.T, res testbed.CLIResult, want []string) {
	t.Helper()
	if res.Code == 0 {
		t.Fatalf("exit 0, want a refusal:\n%s", res)
	}
	for _, w := range want {
		if !strings.Contains(res.Stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, res)
		}
	}
}

// aliasKubeconfig writes a kubeconfig with the testbed's contexts plus
// context alias, another name for c.
func (s *scenario) aliasKubeconfig(c *testbed.Cluster, alias string) string {
	s.t.Helper()
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = s.env.Kubeconfig
	cfg, err := rules.Load()
	s.must(err, "load the kubeconfig")
	orig, ok := cfg.Contexts[c.Context]
	if !ok {
		s.t.Fatalf("kubeconfig has no context %q", c.Context)
	}
	cfg.Contexts[alias] = orig.DeepCopy()
	path := filepath.Join(s.t.TempDir(), "kubeconfig")
	s.must(clientcmd.WriteToFile(*cfg, path), "write the kubeconfig")
	return path
}

// meshObjectVersions returns the resourceVersion of each mesh object the
// CLI writes, in every cluster.
func (s *scenario) meshObjectVersions(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, c := range s.env.Clusters {
		core := c.Kube.CoreV1()
		for _, name := range []string{meshconfig.ConfigMapName, meshconfig.RemoteReadersConfigMap} {
			cm, err := core.ConfigMaps(meshconfig.Namespace).Get(s.ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				out[c.Name+"/"+name] = "absent"
			case err != nil:
				t.Fatalf("read ConfigMap %s of %s: %v", name, c, err)
			default:
				out[c.Name+"/"+name] = cm.ResourceVersion
			}
		}
		for _, name := range []string{meshconfig.ClusterMeshSecret, meshconfig.CASecret, meshconfig.ServerCertSecret, meshconfig.AdminCertSecret} {
			sec, err := core.Secrets(meshconfig.Namespace).Get(s.ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				out[c.Name+"/"+name] = "absent"
			case err != nil:
				t.Fatalf("read Secret %s of %s: %v", name, c, err)
			default:
				out[c.Name+"/"+name] = sec.ResourceVersion
			}
		}
	}
	return out
}
