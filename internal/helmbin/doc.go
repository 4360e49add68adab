// Package helmbin builds and caches the pinned Helm binary that the chart's
// tests and `make chart-lint` run. Helm is a Go program published as the
// module helm.sh/helm/v3, so `go install helm.sh/helm/v3/cmd/helm@Version`
// builds it from the Go module proxy with Helm's own go.mod (its Kubernetes
// libraries do not meet this module's pins), once per version, into the
// cache outside the repository that internal/kubebin uses (kubebin.CacheRoot,
// subdirectory helm/).
//
// Running the real helm binary, rather than the Helm Go SDK in a tool module,
// tests the chart the way users install it (`helm lint`, `helm template`
// with the same template engine, schema validation and flags) and costs no
// more to build: the SDK pulls in the same Kubernetes client libraries.
//
// It must not import apiserver/, agent/, datapath/, cmd/ or any Isthmus
// package but internal/kubebin.
package helmbin
