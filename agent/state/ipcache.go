package state

import (
	"iter"
	"net/netip"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// IPCacheEntry is the merged ipcache entry of one prefix: the identity
// traffic from it carries and the node it lives on.
type IPCacheEntry struct {
	Identity protocol.NumericIdentity
	// TunnelEndpoint is the IP of the node hosting the prefix.
	TunnelEndpoint netip.Addr
	Cluster        string
	ClusterID      uint32
	// Node is set for a node's own address (identity host or remote-node).
	Node bool
	// LocalNode is set for pods and addresses of this very node.
	LocalNode bool
}

// ResolveIPCache calls fn with the merged entry of every prefix in
// prefixes (ok false for prefixes no cluster holds), under one read lock.
// fn must not call back into the State.
func (s *State) ResolveIPCache(prefixes iter.Seq[netip.Prefix], fn func(p netip.Prefix, e IPCacheEntry, ok bool)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	own := s.ownNodeIPsLocked()
	prefixes(func(p netip.Prefix) bool {
		e, ok := s.resolveLocked(p, own)
		fn(p, e, ok)
		return true
	})
}

// AllIPCache calls fn with every merged entry, under one read lock. fn
// must not call back into the State.
func (s *State) AllIPCache(fn func(p netip.Prefix, e IPCacheEntry)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	own := s.ownNodeIPsLocked()
	// A prefix is reported by the first cluster (in preference order) that
	// holds it, found by looking back rather than by a set of every prefix.
	heldBefore := func(i int, p netip.Prefix, nodes bool) bool {
		for _, cs := range s.order[:i] {
			if _, ok := cs.ipcache[p]; ok && !nodes {
				return true
			}
			if _, ok := cs.nodeIPs[p]; ok && nodes {
				return true
			}
		}
		return false
	}
	for i, cs := range s.order {
		for p := range cs.ipcache {
			if heldBefore(i, p, false) {
				continue
			}
			if e, ok := s.resolveLocked(p, own); ok {
				fn(p, e)
			}
		}
	}
	for i, cs := range s.order {
		for p := range cs.nodeIPs {
			if heldBefore(len(s.order), p, false) || heldBefore(i, p, true) {
				continue
			}
			if e, ok := s.resolveLocked(p, own); ok {
				fn(p, e)
			}
		}
	}
}

// IPCacheSize returns the number of merged ipcache entries.
func (s *State) IPCacheSize() int {
	n := 0
	s.AllIPCache(func(netip.Prefix, IPCacheEntry) { n++ })
	return n
}

// ownNodeIPsLocked returns this node's addresses from the local cluster's
// export.
func (s *State) ownNodeIPsLocked() map[netip.Prefix]struct{} {
	cs := s.clusters[s.cfg.LocalCluster]
	if cs == nil || s.cfg.NodeName == "" {
		return nil
	}
	return nodePrefixes(cs.nodes[s.cfg.NodeName])
}

// resolveLocked picks the entry of p: pod entries before node addresses,
// and within each the local cluster first, then clusters by name.
func (s *State) resolveLocked(p netip.Prefix, own map[netip.Prefix]struct{}) (IPCacheEntry, bool) {
	for _, cs := range s.order {
		if e, ok := cs.ipcache[p]; ok {
			_, onNode := own[hostPrefix(e.hostIP)]
			return IPCacheEntry{
				Identity:       e.id,
				TunnelEndpoint: e.hostIP,
				Cluster:        cs.name,
				ClusterID:      e.id.ClusterID(s.cfg.MaxConnectedClusters),
				LocalNode:      cs.local && onNode,
			}, true
		}
	}
	for _, cs := range s.order {
		name, ok := cs.nodeIPs[p]
		if !ok {
			continue
		}
		n := cs.nodes[name]
		self := cs.local && name == s.cfg.NodeName
		id := protocol.IdentityRemoteNode
		if self {
			id = protocol.IdentityHost
		}
		return IPCacheEntry{
			Identity:       id,
			TunnelEndpoint: p.Addr(),
			Cluster:        cs.name,
			ClusterID:      n.ClusterID,
			Node:           true,
			LocalNode:      self,
		}, true
	}
	return IPCacheEntry{}, false
}

// Identities calls fn with every identity of every cluster, under one read
// lock. fn must not call back into the State.
func (s *State) Identities(fn func(cluster string, id protocol.NumericIdentity, labels protocol.Labels)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, cs := range s.order {
		for id, ls := range cs.identities {
			fn(cs.name, id, ls)
		}
	}
}

// Identity returns the labels of id, from whichever cluster exports it.
func (s *State) Identity(id protocol.NumericIdentity) (protocol.Labels, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, cs := range s.order {
		if ls, ok := cs.identities[id]; ok {
			return ls, true
		}
	}
	return nil, false
}

// Nodes calls fn with every node of every cluster, under one read lock. fn
// must not call back into the State nor modify the node.
func (s *State) Nodes(fn func(n *protocol.Node)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, cs := range s.order {
		for _, n := range cs.nodes {
			fn(n)
		}
	}
}
