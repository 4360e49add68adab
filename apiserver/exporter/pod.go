package exporter

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// podExported reports whether a pod's IPs belong in the ipcache: it runs,
// in the pod network.
func podExported(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodRunning && !pod.Spec.HostNetwork && (len(pod.Status.PodIPs) > 0 || pod.Status.PodIP != "")
}

// podIPs returns the pod's IPs, each once.
func podIPs(pod *corev1.Pod) []netip.Addr {
	var ips []netip.Addr
	add := func(s string) {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		ip = ip.Unmap()
		for _, x := range ips {
			if x == ip {
				return
			}
		}
		ips = append(ips, ip)
	}
	for _, p := range pod.Status.PodIPs {
		add(p.IP)
	}
	add(pod.Status.PodIP)
	return ips
}

// PodSecurityLabels returns the security labels of a pod in cluster, given
// its namespace's labels.
func PodSecurityLabels(cluster string, pod *corev1.Pod, namespaceLabels map[string]string) protocol.Labels {
	return protocol.PodSecurityLabels(cluster, pod.Namespace, pod.Spec.ServiceAccountName, pod.Labels, namespaceLabels)
}

// PodIPCacheEntries returns the ipcache entries of a running pod with
// identity id, hosted by node (nil when the Node is not known: the pod's
// reported host IP is used instead).
func PodIPCacheEntries(pod *corev1.Pod, node *corev1.Node, id protocol.NumericIdentity) []*protocol.IPCacheEntry {
	ips := podIPs(pod)
	entries := make([]*protocol.IPCacheEntry, 0, len(ips))
	for _, ip := range ips {
		var host netip.Addr
		if node != nil {
			host = nodeInternalIP(node, ip)
		}
		if !host.IsValid() {
			host, _ = netip.ParseAddr(pod.Status.HostIP)
			host = host.Unmap()
		}
		entries = append(entries, &protocol.IPCacheEntry{
			IP:           ip,
			HostIP:       host,
			ID:           id,
			K8sNamespace: pod.Namespace,
			K8sPodName:   pod.Name,
		})
	}
	return entries
}
