package archtest

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/isthmus-mesh/isthmus"

func TestDatapathDoesNotImportAgentOrAPIServer(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.Command(gobin, "list", "-deps", "-test", "-f", "{{.ImportPath}}", module+"/datapath/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{module + "/apiserver", module + "/agent"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("datapath depends on %s", dep)
			}
		}
	}
}
