package testenv_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundaries: the test plumbing depends on no mesh component, so
// any component's tests can use it without an import cycle.
func TestImportBoundaries(t *testing.T) {
	const module = "github.com/isthmus-mesh/isthmus/"
	pkgs := []string{"internal/testenv", "internal/controlplane", "internal/kubebin", "internal/embedetcd"}
	args := []string{"list", "-deps"}
	for _, p := range pkgs {
		args = append(args, module+p)
	}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(dep, module)
		if !ok {
			continue
		}
		for _, banned := range []string{"apiserver", "agent", "datapath", "cmd", "certs", "federation"} {
			if rest == banned || strings.HasPrefix(rest, banned+"/") {
				t.Errorf("%v depend on %s", pkgs, dep)
			}
		}
	}
}
