package testbed

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundaries: the testbed, and the demo beside it, reach the
// mesh's parts only as a user would (their binaries, APIs and the agent's
// public API types), so what they check is the parts' behaviour, not
// their code.
func TestImportBoundaries(t *testing.T) {
	const module = "github.com/isthmus-mesh/isthmus/"
	allowed := map[string]bool{"agent/api/agentv1": true}
	for pkg, banned := range map[string][]string{
		"e2e/testbed":   {"apiserver", "agent", "datapath", "cmd", "internal/cli"},
		"internal/demo": {"apiserver", "agent", "datapath", "cmd", "internal/cli", "e2e"},
	} {
		out, err := exec.Command("go", "list", "-deps", module+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			rest, ok := strings.CutPrefix(dep, module)
			if !ok || allowed[rest] {
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
