package v1alpha1

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsOnlyAPIMachinery keeps the API types cheap to import: their
// package imports the standard library and k8s.io/apimachinery only, and
// nothing it pulls in is client-go.
func TestImportsOnlyAPIMachinery(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.Command(gobin, "list", "-f", `{{join .Imports "\n"}}`, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, imp := range strings.Fields(string(out)) {
		if strings.Contains(strings.Split(imp, "/")[0], ".") && !strings.HasPrefix(imp, "k8s.io/apimachinery/") {
			t.Errorf("apis/v1alpha1 imports %s", imp)
		}
	}
	out, err = exec.Command(gobin, "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		self := dep == "github.com/isthmus-mesh/isthmus/apis/v1alpha1"
		if strings.HasPrefix(dep, "k8s.io/client-go") || strings.HasPrefix(dep, "github.com/isthmus-mesh/isthmus/") && !self {
			t.Errorf("apis/v1alpha1 depends on %s", dep)
		}
	}
}
