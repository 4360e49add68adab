package exporter

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// ConvertService returns the cluster service of a global, shared Service:
// its cluster IPs as frontends and the ready endpoints of its
// EndpointSlices as backends, ports matched by name.
func ConvertService(cluster string, clusterID uint32, svc *corev1.Service, slices []*discoveryv1.EndpointSlice) *protocol.ClusterService {
	cs := &protocol.ClusterService{
		Cluster:         cluster,
		Namespace:       svc.Namespace,
		Name:            svc.Name,
		Frontends:       map[string]protocol.PortConfiguration{},
		Labels:          svc.Labels,
		Selector:        svc.Spec.Selector,
		IncludeExternal: true,
		Shared:          true,
		ClusterID:       clusterID,
	}
	ports := make(protocol.PortConfiguration, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		ports[p.Name] = &protocol.L4Addr{Protocol: meshconfig.L4Protocol(p.Protocol), Port: uint16(p.Port)}
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue // "None": headless
		}
		cs.Frontends[ip.Unmap().String()] = ports
	}
	cs.Backends, cs.Hostnames = meshconfig.ServiceBackends(svc.Spec.Ports, slices)
	return cs
}
