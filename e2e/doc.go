// Package e2e holds the multi-cluster end-to-end suites: each scenario is
// one test body that runs on a local lab of two clusters (the default; the
// suite brings the lab up on first use and down at the end, shared by every
// scenario; needs root) or on existing kubeconfig contexts with the mesh
// installed:
//
//	go test ./e2e                                   # as root, on a lab
//	go test ./e2e -args -contexts kind-a,kind-b     # on two kind clusters
//
// The clusters come from e2e/testbed. Scenarios attribute every request to
// the pod, node and cluster that answered it by the echo workload's answer
// (internal/lab/echo), and wait for conditions with deadlines, dumping the
// mesh's state and logs when one is not met.
//
// Only tests live here; nothing may import this package.
package e2e
