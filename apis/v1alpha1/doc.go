// Package v1alpha1 holds the Kubernetes API types of group isthmus.dev,
// version v1alpha1: MeshNetworkPolicy (cross-cluster policy by label) and
// MeshAgent (each node agent's view of the mesh, read by `isthmus status`).
//
// It is a public package so that users and tools can build and read these
// objects in Go. The CRD manifests are generated from these types by
// controller-gen (`make generate`) into charts/isthmus/crds and embedded by
// package charts; the deepcopy functions in zz_generated.deepcopy.go are
// generated too. Typed clients and informers live in apis/client.
//
// It must import nothing but k8s.io/apimachinery: no client-go, and no
// Isthmus package, so that importing the types stays cheap.
//
// +kubebuilder:object:generate=true
// +groupName=isthmus.dev
package v1alpha1
