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
	own := s.ownHostsLocked()
	for p := range prefixes {
		e, ok := s.resolveLocked(keyOf(p.Masked()), own)
		fn(p, e, ok)
	}
}

// AllIPCache calls fn with every merged entry, under one read lock. fn
// must not call back into the State.
func (s *State) AllIPCache(fn func(p netip.Prefix, e IPCacheEntry)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	own := s.ownHostsLocked()
	// A prefix is reported by the first cluster (in preference order) that
	// holds it, found by looking back rather than by a set of every prefix.
	heldBefore := func(i int, k ipKey, nodes bool) bool {
		for _, cs := range s.order[:i] {
			if _, ok := cs.ipcache[k]; ok && !nodes {
				return true
			}
			if _, ok := cs.nodeIPs[k]; ok && nodes {
				return true
			}
		}
		return false
	}
	for i, cs := range s.order {
		for k := range cs.ipcache {
			if heldBefore(i, k, false) {
				continue
			}
			if e, ok := s.resolveLocked(k, own); ok {
				fn(k.prefix(), e)
			}
		}
	}
	for i, cs := range s.order {
		for k := range cs.nodeIPs {
			if heldBefore(len(s.order), k, false) || heldBefore(i, k, true) {
				continue
			}
			if e, ok := s.resolveLocked(k, own); ok {
				fn(k.prefix(), e)
			}
		}
	}
}

// IPCacheSize returns the number of merged ipcache entries (the prefixes
// some cluster holds) and how many of them are host prefixes (/32, /128).
func (s *State) IPCacheSize() (total, hosts int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.ipcacheSize, s.ipcacheHosts
}

// ownHostsLocked returns the host-table indices, in the local cluster, of
// this node's addresses.
func (s *State) ownHostsLocked() map[uint32]bool {
	cs := s.clusters[s.cfg.LocalCluster]
	if cs == nil || s.cfg.NodeName == "" {
		return nil
	}
	n := cs.nodes[s.cfg.NodeName].node
	if n == nil {
		return nil
	}
	own := map[uint32]bool{}
	for _, a := range n.IPAddresses {
		if id, ok := cs.hosts.index[a.IP.Unmap()]; ok {
			own[id] = true
		}
	}
	return own
}

// resolveLocked picks the entry of k: pod entries before node addresses,
// and within each the local cluster first, then clusters by name.
func (s *State) resolveLocked(k ipKey, own map[uint32]bool) (IPCacheEntry, bool) {
	for _, cs := range s.order {
		if e, ok := cs.ipcache[k]; ok {
			return IPCacheEntry{
				Identity:       e.id,
				TunnelEndpoint: cs.hosts.addr(e.host),
				Cluster:        cs.name,
				ClusterID:      e.id.ClusterID(s.cfg.MaxConnectedClusters),
				LocalNode:      cs.local && own[e.host],
			}, true
		}
	}
	for _, cs := range s.order {
		name, ok := cs.nodeIPs[k]
		if !ok {
			continue
		}
		n := cs.nodes[name].node
		self := cs.local && name == s.cfg.NodeName
		id := protocol.IdentityRemoteNode
		if self {
			id = protocol.IdentityHost
		}
		return IPCacheEntry{
			Identity:       id,
			TunnelEndpoint: k.prefix().Addr(),
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
		for id, e := range cs.identities {
			fn(cs.name, id, e.labels)
		}
	}
}

// Identity returns the labels of id, from whichever cluster exports it.
func (s *State) Identity(id protocol.NumericIdentity) (protocol.Labels, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, cs := range s.order {
		if e, ok := cs.identities[id]; ok {
			return e.labels, true
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
		for _, e := range cs.nodes {
			fn(e.node)
		}
	}
}
