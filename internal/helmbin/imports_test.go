package helmbin

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundaries: helmbin is build plumbing; of Isthmus it uses the
// kubebin cache alone.
func TestImportBoundaries(t *testing.T) {
	const module = "github.com/isthmus-mesh/isthmus/"
	out, err := exec.Command("go", "list", "-deps", module+"internal/helmbin").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(dep, module)
		if ok && rest != "internal/helmbin" && rest != "internal/kubebin" {
			t.Errorf("internal/helmbin depends on %s", dep)
		}
	}
}
