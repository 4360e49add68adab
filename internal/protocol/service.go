package protocol

import (
	"encoding/json"
	"fmt"
	"net/netip"
)

// L4 protocols a service port may use.
const (
	ProtoTCP  = "TCP"
	ProtoUDP  = "UDP"
	ProtoSCTP = "SCTP"
	ProtoAny  = "ANY"
)

// L4Addr is a protocol and port.
type L4Addr struct {
	Protocol string
	Port     uint16
}

// PortConfiguration maps port names ("" for an unnamed port) to ports.
type PortConfiguration map[string]*L4Addr

// ClusterService is the value of cilium/state/services/v1/<c>/<ns>/<name>:
// a global service's frontends and ready backends in one cluster.
type ClusterService struct {
	Cluster         string                       `json:"cluster"`
	Namespace       string                       `json:"namespace"`
	Name            string                       `json:"name"`
	Frontends       map[string]PortConfiguration `json:"frontends"`
	Backends        map[string]PortConfiguration `json:"backends"`
	Hostnames       map[string]string            `json:"hostnames"`
	Labels          map[string]string            `json:"labels"`
	Selector        map[string]string            `json:"selector"`
	IncludeExternal bool                         `json:"includeExternal"`
	Shared          bool                         `json:"shared"`
	ClusterID       uint32                       `json:"clusterID"`
}

// Encode returns the service's JSON value. Nil maps are written as {} as
// ClusterMesh does.
func (s *ClusterService) Encode() []byte {
	c := *s
	for _, m := range []*map[string]PortConfiguration{&c.Frontends, &c.Backends} {
		if *m == nil {
			*m = map[string]PortConfiguration{}
		}
	}
	for _, m := range []*map[string]string{&c.Hostnames, &c.Labels, &c.Selector} {
		if *m == nil {
			*m = map[string]string{}
		}
	}
	return mustMarshal(&c)
}

// NamespacedName returns "namespace/name".
func (s *ClusterService) NamespacedName() string { return s.Namespace + "/" + s.Name }

// DecodeClusterService decodes and validates a service key and value
// published by cluster (name and ID).
func DecodeClusterService(cluster string, clusterID uint32, key string, value []byte) (*ClusterService, error) {
	keyCluster, ns, name, err := ParseServiceKey(key)
	if err != nil {
		return nil, err
	}
	if keyCluster != cluster {
		return nil, fmt.Errorf("service key %q is outside cluster %q", key, cluster)
	}
	var s ClusterService
	if err := json.Unmarshal(value, &s); err != nil {
		return nil, fmt.Errorf("decode service %q: %w", key, err)
	}
	switch {
	case s.Cluster != cluster:
		return nil, fmt.Errorf("service %q: value names cluster %q, not %q", key, s.Cluster, cluster)
	case s.ClusterID != clusterID:
		return nil, fmt.Errorf("service %q: value has cluster ID %d, not %d", key, s.ClusterID, clusterID)
	case s.Namespace != ns || s.Name != name:
		return nil, fmt.Errorf("service %q: value names %s/%s", key, s.Namespace, s.Name)
	}
	for what, addrs := range map[string]map[string]PortConfiguration{"frontend": s.Frontends, "backend": s.Backends} {
		for ip, ports := range addrs {
			if _, err := netip.ParseAddr(ip); err != nil {
				return nil, fmt.Errorf("service %q: %s %q is not an IP address", key, what, ip)
			}
			for pname, p := range ports {
				if err := validateL4(p); err != nil {
					return nil, fmt.Errorf("service %q: %s %s port %q: %w", key, what, ip, pname, err)
				}
			}
		}
	}
	return &s, nil
}

func validateL4(p *L4Addr) error {
	if p == nil {
		return fmt.Errorf("port is null")
	}
	switch p.Protocol {
	case ProtoTCP, ProtoUDP, ProtoSCTP, ProtoAny:
	default:
		return fmt.Errorf("protocol %q is not one of TCP, UDP, SCTP, ANY", p.Protocol)
	}
	if p.Port == 0 {
		return fmt.Errorf("port number is 0")
	}
	return nil
}
