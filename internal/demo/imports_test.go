package demo_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundaries: the demo drives the mesh as a user does, through
// its binaries and the Kubernetes API, so it links none of the
// components' code.
func TestImportBoundaries(t *testing.T) {
	const module = "github.com/isthmus-mesh/isthmus/"
	out, err := exec.Command("go", "list", "-deps", module+"internal/demo/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(dep, module)
		if !ok {
			continue
		}
		for _, banned := range []string{"apiserver", "agent", "datapath", "internal/cli"} {
			if rest == banned || strings.HasPrefix(rest, banned+"/") {
				t.Errorf("the demo depends on %s", dep)
			}
		}
	}
}
