package meshtest

import (
	"net/netip"
	"strconv"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Identity returns identity number local of the cluster with labels
// app=<app> and the cluster label, and its key and value.
func (c *Cluster) Identity(local uint32, app string) (protocol.Identity, KV) {
	id := protocol.Identity{
		ID: protocol.ComposeIdentity(c.ID, local, c.MaxConnected),
		Labels: protocol.NewLabels(
			protocol.Label{Source: protocol.SourceK8s, Key: "app", Value: app},
			protocol.Label{Source: protocol.SourceK8s, Key: protocol.LabelPolicyCluster, Value: c.Name},
			protocol.Label{Source: protocol.SourceK8s, Key: protocol.LabelPodNamespace, Value: "default"},
		),
	}
	return id, KV{protocol.IdentityKey(id.ID), id.Encode()}
}

// IPCache returns the ipcache entry of a pod IP with identity number local
// on the node with hostIP, and its key and value.
func (c *Cluster) IPCache(ip netip.Addr, local uint32, hostIP netip.Addr) (*protocol.IPCacheEntry, KV) {
	e := &protocol.IPCacheEntry{
		IP:           ip,
		HostIP:       hostIP,
		ID:           protocol.ComposeIdentity(c.ID, local, c.MaxConnected),
		K8sNamespace: "default",
		K8sPodName:   "pod-" + ip.String(),
	}
	return e, KV{protocol.IPCacheKey(ip), e.Encode()}
}

// Node returns node name with InternalIP ip and pod CIDR podCIDR, and its
// key and value.
func (c *Cluster) Node(name string, ip netip.Addr, podCIDR netip.Prefix) (*protocol.Node, KV) {
	n := &protocol.Node{
		Name:          name,
		Cluster:       c.Name,
		IPAddresses:   []protocol.NodeAddress{{Type: protocol.AddressInternalIP, IP: ip}},
		IPv4AllocCIDR: protocol.NewCIDR(podCIDR),
		ClusterID:     c.ID,
		Source:        protocol.NodeSourceCustomResource,
		Labels:        map[string]string{"kubernetes.io/hostname": name},
	}
	return n, KV{protocol.NodeKey(c.Name, name), n.Encode()}
}

// Service returns the export of service ns/name with ClusterIP vip, TCP
// port "http" port -> targetPort, and the given backends, and its key and
// value.
func (c *Cluster) Service(ns, name string, vip netip.Addr, port, targetPort uint16, backends ...netip.Addr) (*protocol.ClusterService, KV) {
	s := &protocol.ClusterService{
		Cluster:         c.Name,
		Namespace:       ns,
		Name:            name,
		Frontends:       map[string]protocol.PortConfiguration{vip.String(): {"http": {Protocol: protocol.ProtoTCP, Port: port}}},
		Backends:        map[string]protocol.PortConfiguration{},
		Selector:        map[string]string{"app": name},
		IncludeExternal: true,
		Shared:          true,
		ClusterID:       c.ID,
	}
	for _, b := range backends {
		s.Backends[b.String()] = protocol.PortConfiguration{"http": {Protocol: protocol.ProtoTCP, Port: targetPort}}
	}
	return s, KV{protocol.ServiceKey(c.Name, ns, name), s.Encode()}
}

// PodIP returns the i-th address of 10.<ClusterID>.0.0/16 (i < 65534).
func (c *Cluster) PodIP(i int) netip.Addr {
	n := i + 1
	return netip.AddrFrom4([4]byte{10, byte(c.ID), byte(n >> 8), byte(n)})
}

// HostIP returns the address of node i of the cluster.
func (c *Cluster) HostIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 18, byte(c.ID), byte(i + 1)})
}

// NodeName returns the name of node i.
func (c *Cluster) NodeName(i int) string { return c.Name + "-node-" + strconv.Itoa(i) }
