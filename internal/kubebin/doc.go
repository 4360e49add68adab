// Package kubebin builds and caches the Kubernetes control-plane binaries
// (kube-apiserver, kube-controller-manager, kube-scheduler) that the local
// lab and the integration tests run. No Docker images or release tarballs
// are available where Isthmus is developed, so the binaries are compiled from
// the published k8s.io/kubernetes Go module with `go build`, once per
// version, into a cache outside the repository (see CacheRoot).
//
// The build uses a small tool module whose go.mod and go.sum are embedded in
// this package (module/go.mod.txt and module/go.sum.txt; go:embed cannot
// reach into a directory holding its own go.mod, hence the .txt suffix).
// Ensure writes them out into the cache and runs the go command there, so an
// installed isthmus binary can build the control plane without the source
// tree. The go command must be on PATH when a build is needed.
//
// The Kubernetes version is pinned once, in KubernetesVersion. To move the
// pin: change KubernetesVersion and run `make kube-pin`, which regenerates
// the module files from k8s.io/kubernetes' own go.mod (every staging module
// it requires at v0.0.0 is replaced by its published v0.X.Y twin) and runs
// `go mod tidy`; then `make kube` builds and caches the binaries.
//
// It must not import apiserver/, agent/, datapath/, cmd/ or any other
// Isthmus package: it is plumbing under the lab and the tests.
package kubebin
