package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// This file states, independently of the agent's code, what an agent's
// maps must hold once it is in sync: what every cluster it reads exports
// (PROTOCOL.md), merged as DESIGN.md says, plus its own cluster's global
// Services. The e2e suites compare it with the agent's dumps.

// ClusterExport is what one cluster's mesh etcd holds of its own state,
// under the prefixes a reader watches.
type ClusterExport struct {
	Cluster   string
	ClusterID uint32
	IPCache   []*protocol.IPCacheEntry
	// Identities are in key order.
	Identities []protocol.Identity
	Nodes      []*protocol.Node
	Services   []*protocol.ClusterService
	// Invalid lists the keys whose values failed to decode; readers skip
	// them, and so does the model.
	Invalid []string
}

// ReadExport reads cluster's export from its mesh etcd.
func ReadExport(ctx context.Context, cli *clientv3.Client, cluster string, clusterID, maxConnected uint32) (*ClusterExport, error) {
	ex := &ClusterExport{Cluster: cluster, ClusterID: clusterID}
	for _, kind := range protocol.Kinds {
		prefix := protocol.WatchPrefix(cluster, kind)
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			return nil, fmt.Errorf("read %s of %s: %w", prefix, cluster, err)
		}
		for _, kv := range resp.Kvs {
			key := string(kv.Key)
			var err error
			switch kind {
			case protocol.KindIPCache:
				var e *protocol.IPCacheEntry
				if e, err = protocol.DecodeIPCacheEntry(clusterID, maxConnected, key, kv.Value); err == nil {
					ex.IPCache = append(ex.IPCache, e)
				}
			case protocol.KindIdentities:
				var id protocol.Identity
				var ok bool
				if id, ok, err = protocol.DecodeIdentity(cluster, clusterID, maxConnected, key, kv.Value); err == nil && ok {
					ex.Identities = append(ex.Identities, id)
				}
			case protocol.KindNodes:
				var n *protocol.Node
				if n, err = protocol.DecodeNode(cluster, clusterID, key, kv.Value); err == nil {
					ex.Nodes = append(ex.Nodes, n)
				}
			case protocol.KindServices:
				var s *protocol.ClusterService
				if s, err = protocol.DecodeClusterService(cluster, clusterID, key, kv.Value); err == nil {
					ex.Services = append(ex.Services, s)
				}
			}
			if err != nil {
				ex.Invalid = append(ex.Invalid, key)
			}
		}
	}
	return ex, nil
}

// LocalView is what an agent knows from its own cluster's Kubernetes API:
// where it runs, and the global Services (with the EndpointSlices of those
// not shared).
type LocalView struct {
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters uint32
	Node                 string
	Services             []corev1.Service
	EndpointSlices       []discoveryv1.EndpointSlice
}

// ReadLocalView reads the local part of what node's agent in c holds.
func ReadLocalView(ctx context.Context, c *Cluster, node string) (LocalView, error) {
	v := LocalView{ClusterName: c.Name, ClusterID: c.ID, MaxConnectedClusters: protocol.MaxConnectedClusters255, Node: node}
	if mc, err := readMeshConfig(ctx, c.Mesh); err == nil {
		v.MaxConnectedClusters = mc.MaxConnectedClusters
	}
	svcs, err := c.Kube.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return v, fmt.Errorf("list the Services of %s: %w", c.Name, err)
	}
	for _, s := range svcs.Items {
		if opts, _ := meshconfig.ParseServiceAnnotations(s.Annotations); opts.Global {
			v.Services = append(v.Services, s)
		}
	}
	eps, err := c.Kube.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return v, fmt.Errorf("list the EndpointSlices of %s: %w", c.Name, err)
	}
	v.EndpointSlices = eps.Items
	return v, nil
}

// ExpectedMaps is what the agent of local.Node must hold once in sync with
// exports, one per cluster it reads (its own included).
func ExpectedMaps(local LocalView, exports []*ClusterExport) *AgentMaps {
	m := &AgentMaps{Node: local.Node}
	var own *ClusterExport
	for _, ex := range exports {
		if ex.Cluster == local.ClusterName {
			own = ex
		}
	}

	// ipcache: pod entries first, then node addresses for the prefixes no
	// pod entry holds.
	ownAddrs := map[netip.Addr]bool{}
	if own != nil {
		for _, n := range own.Nodes {
			if n.Name == local.Node {
				for _, a := range n.IPAddresses {
					ownAddrs[a.IP.Unmap()] = true
				}
			}
		}
	}
	held := map[netip.Prefix]bool{}
	for _, ex := range exports {
		for _, e := range ex.IPCache {
			p := e.Prefix()
			if held[p] {
				continue
			}
			held[p] = true
			var flags uint32
			if ex == own && ownAddrs[e.HostIP] {
				flags |= ipcacheFlagLocalNode
			}
			tep := ""
			if e.HostIP.IsValid() {
				tep = e.HostIP.String()
			}
			m.IPCache = append(m.IPCache, &agentv1.IPCacheEntry{Prefix: p.String(), Identity: uint32(e.ID), TunnelEndpoint: tep, ClusterId: e.ID.ClusterID(local.MaxConnectedClusters), Flags: flags})
		}
	}
	for _, ex := range exports {
		for _, n := range ex.Nodes {
			self := ex == own && n.Name == local.Node
			for _, a := range n.IPAddresses {
				if !a.IP.IsValid() {
					continue
				}
				p := netip.PrefixFrom(a.IP.Unmap(), a.IP.Unmap().BitLen())
				if held[p] {
					continue
				}
				held[p] = true
				id, flags := protocol.IdentityRemoteNode, ipcacheFlagNode
				if self {
					id, flags = protocol.IdentityHost, ipcacheFlagNode|ipcacheFlagLocalNode
				}
				m.IPCache = append(m.IPCache, &agentv1.IPCacheEntry{Prefix: p.String(), Identity: uint32(id), TunnelEndpoint: p.Addr().String(), ClusterId: n.ClusterID, Flags: flags})
			}
		}
	}

	for _, ex := range exports {
		for _, id := range ex.Identities {
			ls := make([]string, len(id.Labels))
			for i, l := range id.Labels {
				ls[i] = l.String()
			}
			m.Identities = append(m.Identities, &agentv1.Identity{Id: uint32(id.ID), Cluster: ex.Cluster, Labels: ls})
		}
	}

	for _, svc := range local.Services {
		m.Services = append(m.Services, expectedService(local, svc, exports)...)
	}
	return m
}

// Flags of an ipcache entry (datapath/maps IPCacheFlag*), as the agent's
// dump reports them.
const (
	ipcacheFlagLocalNode uint32 = 1 << 0
	ipcacheFlagNode      uint32 = 1 << 1
)

// expectedService is one global Service of the agent's cluster as the
// service maps serve it: one entry per ClusterIP and TCP or UDP port, with
// the backends every cluster exports for the same namespace/name and port
// name (and, while the Service is not shared, the local cluster's ready
// endpoints from its EndpointSlices).
func expectedService(local LocalView, svc corev1.Service, exports []*ClusterExport) []*agentv1.Service {
	opts, _ := meshconfig.ParseServiceAnnotations(svc.Annotations)
	type source struct {
		clusterID uint32
		local     bool
		backends  map[string]protocol.PortConfiguration
	}
	var sources []source
	for _, ex := range exports {
		isLocal := ex.Cluster == local.ClusterName
		if isLocal && !opts.Shared {
			continue
		}
		for _, cs := range ex.Services {
			if cs.Namespace == svc.Namespace && cs.Name == svc.Name && cs.Shared {
				sources = append(sources, source{ex.ClusterID, isLocal, cs.Backends})
			}
		}
	}
	if !opts.Shared {
		sources = append(sources, source{local.ClusterID, true, sliceBackends(svc, local.EndpointSlices)})
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []*agentv1.Service
	for _, ip := range ips {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			continue
		}
		addr = addr.Unmap()
		for _, p := range svc.Spec.Ports {
			if p.Protocol != corev1.ProtocolTCP && p.Protocol != corev1.ProtocolUDP {
				continue
			}
			s := &agentv1.Service{
				Frontend: fmt.Sprintf("%s/%s", netip.AddrPortFrom(addr, uint16(p.Port)), p.Protocol),
				Affinity: opts.Affinity,
			}
			for _, src := range sources {
				for bip, ports := range src.backends {
					bp := ports[p.Name]
					b, err := netip.ParseAddr(bip)
					if bp == nil || bp.Protocol != string(p.Protocol) || err != nil || b.Unmap().Is4() != addr.Is4() {
						continue
					}
					s.Backends = append(s.Backends, &agentv1.Backend{Address: b.Unmap().String(), Port: uint32(bp.Port), ClusterId: src.clusterID, Local: src.local})
				}
			}
			out = append(out, s)
		}
	}
	return out
}

// sliceBackends reads a Service's ready endpoints from its EndpointSlices
// in the export's shape, as the mesh apiserver and the agent read them.
func sliceBackends(svc corev1.Service, all []discoveryv1.EndpointSlice) map[string]protocol.PortConfiguration {
	var mine []*discoveryv1.EndpointSlice
	for i := range all {
		if all[i].Namespace == svc.Namespace && all[i].Labels[discoveryv1.LabelServiceName] == svc.Name {
			mine = append(mine, &all[i])
		}
	}
	backends, _ := meshconfig.ServiceBackends(svc.Spec.Ports, mine)
	return backends
}

// DiffMaps compares what an agent holds with what it should, and returns
// one line per difference ("missing ..." / "unexpected ..."); none when
// they are equal. Order does not matter.
func DiffMaps(want, got *AgentMaps) []string {
	var diff []string
	add := func(what string, w, g []string) {
		slices.Sort(w)
		slices.Sort(g)
		for _, s := range w {
			if _, found := slices.BinarySearch(g, s); !found {
				diff = append(diff, "missing "+what+" "+s)
			}
		}
		for _, s := range g {
			if _, found := slices.BinarySearch(w, s); !found {
				diff = append(diff, "unexpected "+what+" "+s)
			}
		}
	}
	add("ipcache", ipcacheLines(want), ipcacheLines(got))
	add("identity", identityLines(want), identityLines(got))
	add("service", serviceLines(want), serviceLines(got))
	return diff
}

func ipcacheLines(m *AgentMaps) []string {
	var out []string
	for _, e := range m.IPCache {
		out = append(out, fmt.Sprintf("%s identity %d tunnel %q cluster %d flags %d", e.Prefix, e.Identity, e.TunnelEndpoint, e.ClusterId, e.Flags))
	}
	return out
}

func identityLines(m *AgentMaps) []string {
	var out []string
	for _, i := range m.Identities {
		out = append(out, fmt.Sprintf("%d of %s: %s", i.Id, i.Cluster, strings.Join(i.Labels, " ")))
	}
	return out
}

func serviceLines(m *AgentMaps) []string {
	var out []string
	for _, s := range m.Services {
		var bs []string
		for _, b := range s.Backends {
			bs = append(bs, fmt.Sprintf("%s:%d@%d/local=%t", b.Address, b.Port, b.ClusterId, b.Local))
		}
		slices.Sort(bs)
		out = append(out, fmt.Sprintf("%s affinity %s backends [%s]", s.Frontend, s.Affinity, strings.Join(bs, " ")))
	}
	return out
}
