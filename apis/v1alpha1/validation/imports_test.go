package validation_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps validation affordable for the apiserver, the agent and
// users: it depends on k8s.io/apimachinery and apis/v1alpha1 only.
func TestImports(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.Command(gobin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const mod = "github.com/isthmus-mesh/isthmus/"
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case dep == mod+"apis/v1alpha1", dep == mod+"apis/v1alpha1/validation":
		case strings.HasPrefix(dep, mod), strings.HasPrefix(dep, "k8s.io/client-go"):
			t.Errorf("validation depends on %s", dep)
		}
	}
}
