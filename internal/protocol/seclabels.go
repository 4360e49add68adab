package protocol

import "strings"

// Label keys the mesh adds to every pod's security labels.
const (
	LabelPolicyCluster        = "io.cilium.k8s.policy.cluster"
	LabelPodNamespace         = "io.kubernetes.pod.namespace"
	LabelServiceAccount       = "io.cilium.k8s.policy.serviceaccount"
	LabelNamespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
)

// droppedLabelKeys are pod label keys that never become security labels:
// they change per pod or per rollout and would split one workload into many
// identities.
var droppedLabelKeys = map[string]bool{
	"pod-template-hash":                  true,
	"controller-revision-hash":           true,
	"pod-template-generation":            true,
	"controller-uid":                     true,
	"statefulset.kubernetes.io/pod-name": true,
	"apps.kubernetes.io/pod-index":       true,
}

// droppedLabelPrefixes are key prefixes of Kubernetes-internal labels.
var droppedLabelPrefixes = []string{
	"io.kubernetes",
	"kubernetes.io",
	"k8s.io",
	"batch.kubernetes.io/",
}

// IsSecurityLabelKey reports whether a pod label key is kept in the pod's
// security labels.
func IsSecurityLabelKey(key string) bool {
	if droppedLabelKeys[key] || strings.Contains(key, "beta.kubernetes.io") {
		return false
	}
	for _, p := range droppedLabelPrefixes {
		if strings.HasPrefix(key, p) {
			return false
		}
	}
	return true
}

// PodSecurityLabels returns the security labels of a pod: its filtered
// labels, its namespace, its namespace's labels, its service account and the
// cluster, all with source k8s.
func PodSecurityLabels(cluster, namespace, serviceAccount string, podLabels, namespaceLabels map[string]string) Labels {
	ls := make([]Label, 0, len(podLabels)+len(namespaceLabels)+3)
	for k, v := range podLabels {
		if IsSecurityLabelKey(k) {
			ls = append(ls, Label{Source: SourceK8s, Key: k, Value: v})
		}
	}
	for k, v := range namespaceLabels {
		ls = append(ls, Label{Source: SourceK8s, Key: LabelNamespaceLabelPrefix + k, Value: v})
	}
	if serviceAccount == "" {
		serviceAccount = "default"
	}
	ls = append(ls,
		Label{Source: SourceK8s, Key: LabelPodNamespace, Value: namespace},
		Label{Source: SourceK8s, Key: LabelServiceAccount, Value: serviceAccount},
		Label{Source: SourceK8s, Key: LabelPolicyCluster, Value: cluster},
	)
	return NewLabels(ls...)
}
