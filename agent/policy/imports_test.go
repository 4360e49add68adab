package policy

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCoreHasNoClient keeps the compiler pure: it depends on no Kubernetes
// client, and on no other part of the agent, the apiserver or the CLI.
func TestCoreHasNoClient(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.Command(gobin, "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const module = "github.com/isthmus-mesh/isthmus/"
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case strings.HasPrefix(dep, "k8s.io/client-go"),
			strings.HasPrefix(dep, module+"apiserver"),
			strings.HasPrefix(dep, module+"cmd"),
			strings.HasPrefix(dep, module+"agent/") && dep != module+"agent/policy":
			t.Errorf("agent/policy depends on %s", dep)
		}
	}
}
