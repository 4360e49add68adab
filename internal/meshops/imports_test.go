package meshops

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundaries: the mesh operations depend on no mesh component
// and not on the CLI, so the lab and the e2e suite call them without
// pulling in either; meshopstest, which runs the real mesh apiserver for
// the tests, stays free of meshops, whose tests use it.
func TestImportBoundaries(t *testing.T) {
	const module = "github.com/isthmus-mesh/isthmus/"
	for pkg, banned := range map[string][]string{
		"internal/meshops":             {"apiserver", "agent", "datapath", "cmd", "federation", "internal/cli", "internal/testenv"},
		"internal/meshops/meshopstest": {"agent", "datapath", "cmd", "federation", "internal/cli", "internal/meshops"},
	} {
		out, err := exec.Command("go", "list", "-deps", module+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			rest, ok := strings.CutPrefix(dep, module)
			if !ok {
				continue
			}
			for _, b := range banned {
				if rest != pkg && (rest == b || strings.HasPrefix(rest, b+"/")) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}
