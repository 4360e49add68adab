package exporter

import (
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

func mapsEqual(a, b map[string]string) bool { return maps.Equal(a, b) }

// podChanged reports whether an update touches what a pod's export
// depends on; pods update often (conditions, container statuses) for
// reasons that do not.
func podChanged(old, pod *corev1.Pod) bool {
	return old.Status.Phase != pod.Status.Phase ||
		old.Spec.HostNetwork != pod.Spec.HostNetwork ||
		old.Spec.NodeName != pod.Spec.NodeName ||
		old.Spec.ServiceAccountName != pod.Spec.ServiceAccountName ||
		old.Status.PodIP != pod.Status.PodIP ||
		old.Status.HostIP != pod.Status.HostIP ||
		!slices.Equal(old.Status.PodIPs, pod.Status.PodIPs) ||
		!maps.Equal(old.Labels, pod.Labels)
}

// nodeChanged reports whether an update touches what a node's export
// depends on; nodes update their status regularly.
func nodeChanged(old, node *corev1.Node) bool {
	return !slices.Equal(old.Status.Addresses, node.Status.Addresses) ||
		!slices.Equal(old.Spec.PodCIDRs, node.Spec.PodCIDRs) ||
		old.Spec.PodCIDR != node.Spec.PodCIDR ||
		!maps.Equal(old.Labels, node.Labels) ||
		old.Annotations[meshconfig.NodeWireGuardPubKeyAnnotation] != node.Annotations[meshconfig.NodeWireGuardPubKeyAnnotation]
}

// trim keeps what the exporter reads of each object, so the informer
// caches of a large cluster stay small: pods keep a handful of fields,
// everything loses its managed fields.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name:              o.Name,
				Namespace:         o.Namespace,
				UID:               o.UID,
				ResourceVersion:   o.ResourceVersion,
				Labels:            o.Labels,
				DeletionTimestamp: o.DeletionTimestamp,
			},
			Spec: corev1.PodSpec{
				NodeName:           o.Spec.NodeName,
				HostNetwork:        o.Spec.HostNetwork,
				ServiceAccountName: o.Spec.ServiceAccountName,
			},
			Status: corev1.PodStatus{
				Phase:   o.Status.Phase,
				PodIP:   o.Status.PodIP,
				PodIPs:  o.Status.PodIPs,
				HostIP:  o.Status.HostIP,
				HostIPs: o.Status.HostIPs,
			},
		}, nil
	case *corev1.Node:
		o.ManagedFields = nil
		o.Status.Images = nil
		return o, nil
	case metav1.Object:
		o.SetManagedFields(nil)
	}
	return obj, nil
}
