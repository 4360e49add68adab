package state

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Frontend is one address a global service is reached at in the local
// cluster: a ClusterIP and one of the Service's ports.
type Frontend struct {
	Addr     netip.Addr
	Port     uint16
	Protocol string // protocol.ProtoTCP, ProtoUDP, ...
	// PortName is the Service port's name, "" when unnamed; backends are
	// matched to frontends by it.
	PortName string
}

// LocalService is the local cluster's Kubernetes Service of a global
// service: where it is reached and how it prefers backends.
type LocalService struct {
	Frontends []Frontend
	// Shared false means the local cluster does not export the service, so
	// its local backends come from its EndpointSlices.
	Shared bool
	// Affinity is meshconfig.AffinityNone, AffinityLocal or
	// AffinityRemote.
	Affinity string
}

// Backend is one endpoint of a global service.
type Backend struct {
	Addr      netip.Addr
	Port      uint16
	Cluster   string
	ClusterID uint32
	Local     bool // in the local cluster
}

// DesiredService is what the datapath should serve at one frontend.
type DesiredService struct {
	Name     ServiceName
	Frontend Frontend
	Affinity string
	Backends []Backend
}

// UpsertLocalService records the local Kubernetes Service of global
// service nn.
func (s *State) UpsertLocalService(nn ServiceName, svc LocalService) {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc.Frontends = slices.Clone(svc.Frontends)
	s.localServices[nn] = &svc
	s.serviceChangedLocked(nn, s.cfg.Now())
}

// DeleteLocalService forgets the local Service of nn (deleted, or no longer
// global).
func (s *State) DeleteLocalService(nn ServiceName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.localServices[nn]; !ok {
		return
	}
	delete(s.localServices, nn)
	s.serviceChangedLocked(nn, s.cfg.Now())
}

// SetLocalEndpoints records the ready local endpoints of nn from its
// EndpointSlices, in the export's shape (IP -> port name -> port); nil
// forgets them. They are used only while the local Service is not shared.
func (s *State) SetLocalEndpoints(nn ServiceName, backends map[string]protocol.PortConfiguration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.localEndpoints[nn]
	if backends == nil {
		if !had {
			return
		}
		delete(s.localEndpoints, nn)
	} else {
		if had && equalBackends(old, backends) {
			return
		}
		s.localEndpoints[nn] = backends
	}
	if ls := s.localServices[nn]; ls != nil && !ls.Shared {
		s.serviceChangedLocked(nn, s.cfg.Now())
	}
}

func equalBackends(a, b map[string]protocol.PortConfiguration) bool {
	return maps.EqualFunc(a, b, func(x, y protocol.PortConfiguration) bool {
		return maps.EqualFunc(x, y, func(p, q *protocol.L4Addr) bool {
			return (p == nil && q == nil) || (p != nil && q != nil && *p == *q)
		})
	})
}

// LocalServiceNames returns the global services the local cluster has a
// Service for: exactly those the datapath serves.
func (s *State) LocalServiceNames() []ServiceName {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Collect(maps.Keys(s.localServices))
}

// Service returns what the datapath should serve for global service nn,
// one entry per frontend; none when the local cluster has no Service for
// it. Backends are matched to a frontend by port name and protocol, and
// must be of the frontend's address family.
func (s *State) Service(nn ServiceName) []DesiredService {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ls := s.localServices[nn]
	if ls == nil {
		return nil
	}
	type source struct {
		cluster   string
		clusterID uint32
		local     bool
		backends  map[string]protocol.PortConfiguration
	}
	var sources []source
	for _, cs := range s.order {
		if cs.local && !ls.Shared {
			continue // not exported; its endpoints come from the slices below
		}
		exp := cs.services[nn].svc
		if exp == nil || !exp.Shared {
			continue
		}
		sources = append(sources, source{cs.name, exp.ClusterID, cs.local, exp.Backends})
	}
	if !ls.Shared {
		if eps := s.localEndpoints[nn]; eps != nil {
			sources = append(sources, source{s.cfg.LocalCluster, s.cfg.LocalClusterID, true, eps})
		}
	}

	out := make([]DesiredService, 0, len(ls.Frontends))
	for _, fe := range ls.Frontends {
		d := DesiredService{Name: nn, Frontend: fe, Affinity: ls.Affinity}
		for _, src := range sources {
			for ip, ports := range src.backends {
				p := ports[fe.PortName]
				if p == nil || p.Protocol != fe.Protocol {
					continue
				}
				addr, err := netip.ParseAddr(ip)
				if err != nil || addr.Unmap().Is4() != fe.Addr.Unmap().Is4() {
					continue
				}
				d.Backends = append(d.Backends, Backend{Addr: addr.Unmap(), Port: p.Port, Cluster: src.cluster, ClusterID: src.clusterID, Local: src.local})
			}
		}
		out = append(out, d)
	}
	return out
}

// ServiceExports returns each cluster's export of nn, by cluster.
func (s *State) ServiceExports(nn ServiceName) map[string]*protocol.ClusterService {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]*protocol.ClusterService)
	for _, cs := range s.order {
		if exp := cs.services[nn].svc; exp != nil {
			out[cs.name] = exp
		}
	}
	return out
}
