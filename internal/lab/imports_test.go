package lab_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundaries: the lab runs the mesh's binaries but links none of
// their code, so any component's e2e tests can use it without an import
// cycle, and the lab's own processes stay small.
func TestImportBoundaries(t *testing.T) {
	const module = "github.com/isthmus-mesh/isthmus/"
	out, err := exec.Command("go", "list", "-deps", module+"internal/lab/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(dep, module)
		if !ok {
			continue
		}
		for _, banned := range []string{"apiserver", "agent", "datapath", "cmd", "federation", "internal/cli"} {
			if rest == banned || strings.HasPrefix(rest, banned+"/") {
				t.Errorf("the lab depends on %s", dep)
			}
		}
	}
}
