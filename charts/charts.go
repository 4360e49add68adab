// Package charts embeds the parts of the Helm chart that Go programs need:
// the CRD manifests in isthmus/crds, generated from apis/v1alpha1 by
// controller-gen (`make generate`). `isthmus enable`, the lab and the
// integration tests install the CRDs from here (see apis/client.InstallCRDs),
// so every installer ships exactly the manifests the chart ships.
//
// It must import nothing but the standard library.
package charts

import (
	"embed"
	"io/fs"
	"path"
)

//go:embed isthmus/crds/*.yaml
var crds embed.FS

// CRDDir is the chart's CRD directory, relative to charts/.
const CRDDir = "isthmus/crds"

// CRDFile is one CRD manifest.
type CRDFile struct {
	// Name is the file name, e.g. "isthmus.dev_meshnetworkpolicies.yaml".
	Name string
	// YAML is the manifest: one CustomResourceDefinition.
	YAML []byte
}

// CRDs returns the CRD manifests, sorted by file name.
func CRDs() []CRDFile {
	entries, err := fs.ReadDir(crds, CRDDir) // sorted by name
	if err != nil {
		// The directory is embedded at build time; a missing one cannot
		// compile.
		panic(err)
	}
	out := make([]CRDFile, 0, len(entries))
	for _, e := range entries {
		b, err := crds.ReadFile(path.Join(CRDDir, e.Name()))
		if err != nil {
			panic(err)
		}
		out = append(out, CRDFile{Name: e.Name(), YAML: b})
	}
	return out
}
