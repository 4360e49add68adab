package state

import (
	"maps"
	"net/netip"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// ClusterWriter writes one cluster's export into the State. It implements
// remotecluster.Handler. Safe for concurrent use, though a cluster's reader
// calls it from one goroutine. After RemoveCluster, writes are dropped
// until Cluster is called again for the name.
type ClusterWriter struct {
	s    *State
	name string
}

// write runs f on the cluster's state under the State lock; f is skipped
// for a removed cluster.
func (w *ClusterWriter) write(f func(cs *clusterState)) {
	s := w.s
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := s.clusters[w.name]
	if cs == nil {
		return
	}
	f(cs)
}

// UpsertIdentity adds or replaces an identity.
func (w *ClusterWriter) UpsertIdentity(id protocol.Identity) {
	w.write(func(cs *clusterState) {
		if old, ok := cs.identities[id.ID]; ok && old.Equal(id.Labels) {
			return
		}
		cs.identities[id.ID] = id.Labels
		w.identityChanged(cs, id.ID)
	})
}

// DeleteIdentity removes an identity.
func (w *ClusterWriter) DeleteIdentity(id protocol.NumericIdentity) {
	w.write(func(cs *clusterState) {
		if _, ok := cs.identities[id]; !ok {
			return
		}
		delete(cs.identities, id)
		w.identityChanged(cs, id)
	})
}

func (w *ClusterWriter) identityChanged(cs *clusterState, id protocol.NumericIdentity) {
	now := w.s.cfg.Now()
	cs.lastChange = now
	for _, c := range w.s.identitySubs {
		c.add(id, now)
	}
}

// UpsertIPCache adds or replaces the entry of e's key address.
func (w *ClusterWriter) UpsertIPCache(e *protocol.IPCacheEntry) {
	w.write(func(cs *clusterState) {
		s := w.s
		now := s.cfg.Now()
		p := e.Prefix()
		// The same key may have carried another mask before.
		old, masked := cs.maskedKeys[e.IP]
		if !masked {
			old = hostPrefix(e.IP)
		}
		if _, held := cs.ipcache[old]; held && old != p {
			delete(cs.ipcache, old)
			s.ipcacheChangedLocked(old, now)
		}
		if p.Bits() != e.IP.BitLen() {
			cs.maskedKeys[e.IP] = p
		} else {
			delete(cs.maskedKeys, e.IP)
		}
		v := podEntry{id: e.ID, hostIP: e.HostIP}
		if old, ok := cs.ipcache[p]; ok && old == v {
			return
		}
		cs.ipcache[p] = v
		cs.lastChange = now
		s.ipcacheChangedLocked(p, now)
	})
}

// DeleteIPCache removes the entry of key address a.
func (w *ClusterWriter) DeleteIPCache(a netip.Addr) {
	w.write(func(cs *clusterState) {
		p, masked := cs.maskedKeys[a]
		if masked {
			delete(cs.maskedKeys, a)
		} else {
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if _, ok := cs.ipcache[p]; !ok {
			return
		}
		delete(cs.ipcache, p)
		now := w.s.cfg.Now()
		cs.lastChange = now
		w.s.ipcacheChangedLocked(p, now)
	})
}

// UpsertNode adds or replaces a node.
func (w *ClusterWriter) UpsertNode(n *protocol.Node) {
	w.write(func(cs *clusterState) {
		old := cs.nodes[n.Name]
		cs.nodes[n.Name] = n
		w.nodeChanged(cs, old, n)
	})
}

// DeleteNode removes a node.
func (w *ClusterWriter) DeleteNode(name string) {
	w.write(func(cs *clusterState) {
		old, ok := cs.nodes[name]
		if !ok {
			return
		}
		delete(cs.nodes, name)
		w.nodeChanged(cs, old, nil)
	})
}

func (w *ClusterWriter) nodeChanged(cs *clusterState, old, cur *protocol.Node) {
	s := w.s
	now := s.cfg.Now()
	cs.lastChange = now
	name := cur
	if name == nil {
		name = old
	}
	for _, c := range s.nodeSubs {
		c.add(NodeName{cs.name, name.Name}, now)
	}
	oldIPs, newIPs := nodePrefixes(old), nodePrefixes(cur)
	for p := range oldIPs {
		if _, keep := newIPs[p]; !keep && cs.nodeIPs[p] == name.Name {
			delete(cs.nodeIPs, p)
			s.ipcacheChangedLocked(p, now)
		}
	}
	for p := range newIPs {
		if _, had := oldIPs[p]; !had || cs.nodeIPs[p] != name.Name {
			cs.nodeIPs[p] = name.Name
			s.ipcacheChangedLocked(p, now)
		}
	}
	// This node's addresses decide which local pods are on this node.
	if cs.local && name.Name == s.cfg.NodeName && !maps.Equal(oldIPs, newIPs) {
		for p, e := range cs.ipcache {
			if _, a := oldIPs[hostPrefix(e.hostIP)]; a {
				s.ipcacheChangedLocked(p, now)
			} else if _, b := newIPs[hostPrefix(e.hostIP)]; b {
				s.ipcacheChangedLocked(p, now)
			}
		}
	}
}

// nodePrefixes returns a node's addresses as host prefixes.
func nodePrefixes(n *protocol.Node) map[netip.Prefix]struct{} {
	out := map[netip.Prefix]struct{}{}
	if n == nil {
		return out
	}
	for _, a := range n.IPAddresses {
		if a.IP.IsValid() {
			out[hostPrefix(a.IP)] = struct{}{}
		}
	}
	return out
}

func hostPrefix(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen())
}

// UpsertService adds or replaces the cluster's export of a global service.
func (w *ClusterWriter) UpsertService(svc *protocol.ClusterService) {
	w.write(func(cs *clusterState) {
		nn := ServiceName{svc.Namespace, svc.Name}
		cs.services[nn] = svc
		now := w.s.cfg.Now()
		cs.lastChange = now
		w.s.serviceChangedLocked(nn, now)
	})
}

// DeleteService removes the cluster's export of a global service.
func (w *ClusterWriter) DeleteService(namespace, name string) {
	w.write(func(cs *clusterState) {
		nn := ServiceName{namespace, name}
		if _, ok := cs.services[nn]; !ok {
			return
		}
		delete(cs.services, nn)
		now := w.s.cfg.Now()
		cs.lastChange = now
		w.s.serviceChangedLocked(nn, now)
	})
}

// Synced records that kind's initial state is complete.
func (w *ClusterWriter) Synced(kind protocol.Kind) {
	w.write(func(cs *clusterState) {
		cs.synced[kind] = true
		if cs.everSynced || len(cs.synced) < len(protocol.Kinds) {
			return
		}
		cs.everSynced = true
		w.s.syncChangedLocked()
	})
}
