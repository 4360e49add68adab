package exporter

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// ConvertNode returns the mesh entry of a Node. A WireGuard key annotation
// that is not a valid key is left out and reported in badKey, so the node
// is still exported without it.
func ConvertNode(cluster string, clusterID uint32, node *corev1.Node) (n *protocol.Node, badKey *meshconfig.AnnotationProblem) {
	n = &protocol.Node{
		Name:      node.Name,
		Cluster:   cluster,
		ClusterID: clusterID,
		Source:    protocol.NodeSourceCustomResource,
		Labels:    node.Labels,
	}
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		n.IPAddresses = append(n.IPAddresses, protocol.NodeAddress{Type: string(a.Type), IP: ip.Unmap()})
	}
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		c := protocol.NewCIDR(p)
		switch {
		case p.Addr().Is4() && n.IPv4AllocCIDR == nil:
			n.IPv4AllocCIDR = c
		case p.Addr().Is4():
			n.IPv4SecondaryAllocCIDRs = append(n.IPv4SecondaryAllocCIDRs, c)
		case n.IPv6AllocCIDR == nil:
			n.IPv6AllocCIDR = c
		default:
			n.IPv6SecondaryAllocCIDRs = append(n.IPv6SecondaryAllocCIDRs, c)
		}
	}
	if key, ok := node.Annotations[meshconfig.NodeWireGuardPubKeyAnnotation]; ok {
		if err := protocol.ValidateWireGuardKey(key); err != nil {
			badKey = &meshconfig.AnnotationProblem{
				Annotation: meshconfig.NodeWireGuardPubKeyAnnotation,
				Value:      key,
				Default:    "no key (remote nodes cannot reach this node's pods until its agent sets a valid one)",
				Reason:     "is not a base64-encoded 32-byte WireGuard public key",
			}
		} else {
			n.WireguardPubKey = key
		}
	}
	return n, badKey
}

// nodeInternalIP returns the node's InternalIP of the family of ip,
// falling back to one of the other family.
func nodeInternalIP(node *corev1.Node, ip netip.Addr) netip.Addr {
	var other netip.Addr
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		addr, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		addr = addr.Unmap()
		if addr.Is4() == ip.Is4() {
			return addr
		}
		if !other.IsValid() {
			other = addr
		}
	}
	return other
}

// internalIPs is what pods' ipcache entries depend on in a Node.
func internalIPs(node *corev1.Node) string {
	s := ""
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			s += a.Address + ","
		}
	}
	return s
}
