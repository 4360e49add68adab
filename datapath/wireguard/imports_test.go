package wireguard

import (
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the package to its place (see the package doc): it
// knows nodes as keys, endpoints and prefixes, not as the components or
// client libraries that produce them.
func TestImports(t *testing.T) {
	forbidden := []string{
		"github.com/isthmus-mesh/isthmus/apiserver",
		"github.com/isthmus-mesh/isthmus/agent",
		"github.com/isthmus-mesh/isthmus/federation",
		"github.com/isthmus-mesh/isthmus/cmd",
		"k8s.io/",
		"go.etcd.io/",
	}
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if strings.HasPrefix(path, bad) {
					t.Errorf("%s imports %s", name, path)
				}
			}
		}
	}
}
