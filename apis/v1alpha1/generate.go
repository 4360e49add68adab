package v1alpha1

// controller-gen is pinned by the tool directive in go.mod; `make generate`
// runs this, `make verify-crds` checks the committed output is current.
//go:generate go tool controller-gen object crd paths=. output:crd:dir=../../charts/isthmus/crds
