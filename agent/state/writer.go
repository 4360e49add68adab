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

// Resync starts a new listing of kind: entries not written again before
// the next Sweep of kind are deleted by it.
func (w *ClusterWriter) Resync(kind protocol.Kind) {
	i := kindIndex(kind)
	w.write(func(cs *clusterState) { cs.gen[i]++ })
}

// Sweep deletes the entries of kind not written since the last Resync of
// kind and returns how many it deleted.
func (w *ClusterWriter) Sweep(kind protocol.Kind) int {
	i := kindIndex(kind)
	n := 0
	w.write(func(cs *clusterState) {
		gen := cs.gen[i]
		switch i {
		case kindIdentities:
			for id, e := range cs.identities {
				if e.gen != gen {
					w.deleteIdentity(cs, id)
					n++
				}
			}
		case kindIPCache:
			for k, e := range cs.ipcache {
				if e.gen != gen {
					w.deleteIPCache(cs, k)
					n++
				}
			}
			for hk, k := range cs.maskedKeys {
				if _, ok := cs.ipcache[k]; !ok {
					delete(cs.maskedKeys, hk)
				}
			}
		case kindNodes:
			for name, e := range cs.nodes {
				if e.gen != gen {
					delete(cs.nodes, name)
					w.nodeChanged(cs, e.node, nil)
					n++
				}
			}
		case kindServices:
			for nn, e := range cs.services {
				if e.gen != gen {
					w.deleteService(cs, nn)
					n++
				}
			}
		}
	})
	return n
}

// UpsertIdentity adds or replaces an identity.
func (w *ClusterWriter) UpsertIdentity(id protocol.Identity) {
	w.write(func(cs *clusterState) {
		gen := cs.gen[kindIdentities]
		if old, ok := cs.identities[id.ID]; ok && old.labels.Equal(id.Labels) {
			cs.identities[id.ID] = identityEntry{old.labels, gen}
			return
		}
		cs.identities[id.ID] = identityEntry{id.Labels, gen}
		w.identityChanged(cs, id.ID)
	})
}

// DeleteIdentity removes an identity.
func (w *ClusterWriter) DeleteIdentity(id protocol.NumericIdentity) {
	w.write(func(cs *clusterState) { w.deleteIdentity(cs, id) })
}

func (w *ClusterWriter) deleteIdentity(cs *clusterState, id protocol.NumericIdentity) {
	if _, ok := cs.identities[id]; !ok {
		return
	}
	delete(cs.identities, id)
	w.identityChanged(cs, id)
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
		k := keyOf(e.Prefix())
		hk := hostKey(e.IP)
		// The same key may have carried another mask before.
		old, masked := cs.maskedKeys[hk]
		if !masked {
			old = hk
		}
		if _, held := cs.ipcache[old]; held && old != k {
			w.deleteIPCache(cs, old)
		}
		if k != hk {
			cs.maskedKeys[hk] = k
		} else if masked {
			delete(cs.maskedKeys, hk)
		}
		v := podEntry{id: e.ID, host: cs.hosts.id(e.HostIP), gen: cs.gen[kindIPCache]}
		prev, had := cs.ipcache[k]
		if had && prev == v {
			return
		}
		if !had && !s.heldLocked(k) {
			s.resize(k, 1)
		}
		cs.ipcache[k] = v
		if had && prev.id == v.id && prev.host == v.host {
			return // only the generation moved
		}
		now := s.cfg.Now()
		cs.lastChange = now
		s.ipcacheChangedLocked(k, now)
	})
}

// DeleteIPCache removes the entry of key address a.
func (w *ClusterWriter) DeleteIPCache(a netip.Addr) {
	w.write(func(cs *clusterState) {
		hk := hostKey(a)
		k, masked := cs.maskedKeys[hk]
		if masked {
			delete(cs.maskedKeys, hk)
		} else {
			k = hk
		}
		w.deleteIPCache(cs, k)
	})
}

func (w *ClusterWriter) deleteIPCache(cs *clusterState, k ipKey) {
	if _, ok := cs.ipcache[k]; !ok {
		return
	}
	s := w.s
	delete(cs.ipcache, k)
	if !s.heldLocked(k) {
		s.resize(k, -1)
	}
	now := s.cfg.Now()
	cs.lastChange = now
	s.ipcacheChangedLocked(k, now)
}

// UpsertNode adds or replaces a node.
func (w *ClusterWriter) UpsertNode(n *protocol.Node) {
	w.write(func(cs *clusterState) {
		old := cs.nodes[n.Name].node
		cs.nodes[n.Name] = nodeEntry{n, cs.gen[kindNodes]}
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
		w.nodeChanged(cs, old.node, nil)
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
	oldIPs, newIPs := nodeKeys(old), nodeKeys(cur)
	for k := range oldIPs {
		if _, keep := newIPs[k]; !keep && cs.nodeIPs[k] == name.Name {
			delete(cs.nodeIPs, k)
			if !s.heldLocked(k) {
				s.resize(k, -1)
			}
			s.ipcacheChangedLocked(k, now)
		}
	}
	for k := range newIPs {
		if owner, had := cs.nodeIPs[k]; !had || owner != name.Name {
			if !had && !s.heldLocked(k) {
				s.resize(k, 1)
			}
			cs.nodeIPs[k] = name.Name
			s.ipcacheChangedLocked(k, now)
		}
	}
	// This node's addresses decide which local pods are on this node.
	if cs.local && name.Name == s.cfg.NodeName && !maps.Equal(oldIPs, newIPs) {
		changed := map[uint32]bool{}
		for k := range oldIPs {
			changed[cs.hosts.id(k.prefix().Addr())] = true
		}
		for k := range newIPs {
			changed[cs.hosts.id(k.prefix().Addr())] = true
		}
		for k, e := range cs.ipcache {
			if changed[e.host] {
				s.ipcacheChangedLocked(k, now)
			}
		}
	}
}

// nodeKeys returns a node's addresses as host keys.
func nodeKeys(n *protocol.Node) map[ipKey]struct{} {
	out := map[ipKey]struct{}{}
	if n == nil {
		return out
	}
	for _, a := range n.IPAddresses {
		if a.IP.IsValid() {
			out[hostKey(a.IP)] = struct{}{}
		}
	}
	return out
}

// UpsertService adds or replaces the cluster's export of a global service.
func (w *ClusterWriter) UpsertService(svc *protocol.ClusterService) {
	w.write(func(cs *clusterState) {
		nn := ServiceName{svc.Namespace, svc.Name}
		cs.services[nn] = serviceEntry{svc, cs.gen[kindServices]}
		now := w.s.cfg.Now()
		cs.lastChange = now
		w.s.serviceChangedLocked(nn, now)
	})
}

// DeleteService removes the cluster's export of a global service.
func (w *ClusterWriter) DeleteService(namespace, name string) {
	w.write(func(cs *clusterState) { w.deleteService(cs, ServiceName{namespace, name}) })
}

func (w *ClusterWriter) deleteService(cs *clusterState, nn ServiceName) {
	if _, ok := cs.services[nn]; !ok {
		return
	}
	delete(cs.services, nn)
	now := w.s.cfg.Now()
	cs.lastChange = now
	w.s.serviceChangedLocked(nn, now)
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
