package meshconfig

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// ServiceBackends reads the ready endpoints of a Service's EndpointSlices
// in the export's shape (PROTOCOL.md, cilium/state/services): address ->
// port name -> port, and address -> hostname for the endpoints that have
// one. It is the mesh's one reading of EndpointSlices: the mesh apiserver
// exports what it returns, and a node agent uses it directly for the
// services of its own cluster that are not shared, so that both agree.
//
// Only the slice ports named by a port of the Service (svcPorts) are kept,
// and a slice with none of them contributes nothing. Slices of address type FQDN are skipped; addresses are
// normalised (an IPv4-mapped IPv6 address becomes IPv4) and unparsable ones
// skipped. A missing ready condition means ready (discovery/v1).
func ServiceBackends(svcPorts []corev1.ServicePort, slices []*discoveryv1.EndpointSlice) (backends map[string]protocol.PortConfiguration, hostnames map[string]string) {
	backends = map[string]protocol.PortConfiguration{}
	hostnames = map[string]string{}
	wanted := make(map[string]bool, len(svcPorts))
	for _, p := range svcPorts {
		wanted[p.Name] = true
	}
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := protocol.PortConfiguration{}
		for _, p := range sl.Ports {
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if p.Port == nil || !wanted[name] {
				continue
			}
			proto := corev1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			ports[name] = &protocol.L4Addr{Protocol: L4Protocol(proto), Port: uint16(*p.Port)}
		}
		if len(ports) == 0 {
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, s := range ep.Addresses {
				ip, err := netip.ParseAddr(s)
				if err != nil {
					continue
				}
				addr := ip.Unmap().String()
				pc := backends[addr]
				if pc == nil {
					pc = make(protocol.PortConfiguration, len(ports))
					backends[addr] = pc
				}
				for n, p := range ports {
					pc[n] = p
				}
				if ep.Hostname != nil && *ep.Hostname != "" {
					hostnames[addr] = *ep.Hostname
				}
			}
		}
	}
	return backends, hostnames
}

// L4Protocol returns the export's spelling of a Kubernetes port protocol;
// TCP when it is not set or not known.
func L4Protocol(p corev1.Protocol) string {
	switch p {
	case corev1.ProtocolUDP:
		return protocol.ProtoUDP
	case corev1.ProtocolSCTP:
		return protocol.ProtoSCTP
	}
	return protocol.ProtoTCP
}
