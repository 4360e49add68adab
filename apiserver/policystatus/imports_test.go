package policystatus_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps the status writer on the apiserver's side of the
// boundary: it validates with apis/v1alpha1/validation, not with the
// agent's compiler, and depends on nothing of agent/, datapath/ or cmd/.
func TestImports(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.Command(gobin, "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const mod = "github.com/isthmus-mesh/isthmus/"
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range []string{"agent/", "datapath/", "cmd/"} {
			if strings.HasPrefix(dep, mod+f) {
				t.Errorf("apiserver/policystatus depends on %s", dep)
			}
		}
	}
}
