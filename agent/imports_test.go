package agent_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundaries checks what each agent package says it must not
// import: reading clusters knows nothing of the datapath or Kubernetes,
// the merged state nothing of where its data comes from or goes, and no
// agent package depends on the apiserver or the binaries.
func TestImportBoundaries(t *testing.T) {
	const mod = "github.com/isthmus-mesh/isthmus/"
	forbidden := map[string][]string{
		"agent/remotecluster": {"datapath/", "agent/state", "agent/reconcilers", "k8s.io/client-go"},
		"agent/state":         {"datapath/", "agent/remotecluster", "agent/clustermesh", "agent/localservices", "agent/reconcilers", "k8s.io/"},
		"agent/reconcilers":   {"agent/remotecluster", "agent/clustermesh", "agent/localservices", "k8s.io/client-go"},
		"agent/clustermesh":   {"datapath/", "agent/reconcilers"},
		"agent/localservices": {"datapath/", "agent/reconcilers", "agent/remotecluster"},
		"agent/meshpolicy":    {"agent/remotecluster", "agent/clustermesh", "agent/localservices", "agent/reconcilers", "agent/tunnel", "agent/flows"},
		"agent/api/agentv1":   {""}, // nothing of the module
		"agent/tunnel":        {"k8s.io/", "agent/remotecluster", "agent/clustermesh", "agent/localservices", "agent/reconcilers", "agent/flows"},
		"agent/flows":         {"k8s.io/", "agent/state", "agent/remotecluster", "agent/clustermesh", "agent/tunnel", "agent/reconcilers"},
		"agent/nodekey":       {"datapath/", "agent/state", "agent/remotecluster", "agent/clustermesh", "agent/tunnel"},
		"agent/meshagent":     {"datapath/", "agent/state", "agent/remotecluster", "agent/clustermesh", "agent/tunnel"},
	}
	// Entries are module paths unless they name another module.
	abs := func(f string) string {
		if strings.HasPrefix(f, "k8s.io/") {
			return f
		}
		return mod + f
	}
	everywhere := []string{mod + "apiserver", mod + "cmd/", mod + "internal/testenv", mod + "agent/internal/"}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not in PATH: %v", err)
	}
	for _, pkg := range []string{"agent", "agent/remotecluster", "agent/state", "agent/reconcilers", "agent/clustermesh", "agent/localservices", "agent/agentcmd", "agent/api/agentv1",
		"agent/tunnel", "agent/flows", "agent/nodekey", "agent/meshagent", "agent/meshpolicy"} {
		out, err := exec.Command(gobin, "list", "-deps", "-f", "{{.ImportPath}}", mod+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == mod+pkg {
				continue
			}
			for _, f := range forbidden[pkg] {
				if strings.HasPrefix(dep, abs(f)) {
					t.Errorf("%s imports %s", pkg, dep)
				}
			}
			for _, f := range everywhere {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s imports %s", pkg, dep)
				}
			}
		}
	}
}
