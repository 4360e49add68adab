package kubebin

import "strings"

// KubernetesVersion is the k8s.io/kubernetes release the control-plane
// binaries are built from: the one place the version is pinned. The embedded
// module files are generated from it by `make kube-pin`, and a test fails
// when they disagree.
//
// v1.37.2 is the project's client version, but the module proxy refuses the
// k8s.io/kubernetes v1.37.2 source archive ("This module version is not
// available"), so the control plane is pinned to v1.37.1, whose go.mod is
// identical; move the pin when the proxy serves v1.37.2.
const KubernetesVersion = "v1.37.1"

// StagingVersion returns the version of the k8s.io staging modules
// (k8s.io/api, k8s.io/apiserver, ...) published with Kubernetes release v:
// v1.X.Y becomes v0.X.Y.
func StagingVersion(v string) string {
	if rest, ok := strings.CutPrefix(v, "v1."); ok {
		return "v0." + rest
	}
	return v
}
