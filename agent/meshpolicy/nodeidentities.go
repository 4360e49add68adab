package meshpolicy

import (
	"net/netip"

	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// nodeIdentities counts, per identity, the local cluster's pods hosted on
// this node, from the merged ipcache. Not safe for concurrent use.
type nodeIdentities struct {
	cluster  string
	byPrefix map[netip.Prefix]protocol.NumericIdentity
	count    map[protocol.NumericIdentity]int
}

func newNodeIdentities(cluster string) *nodeIdentities {
	return &nodeIdentities{
		cluster:  cluster,
		byPrefix: make(map[netip.Prefix]protocol.NumericIdentity),
		count:    make(map[protocol.NumericIdentity]int),
	}
}

// onNode reports whether an ipcache entry is a pod of the local cluster
// hosted on this node.
func (n *nodeIdentities) onNode(e state.IPCacheEntry, ok bool) bool {
	return ok && e.LocalNode && !e.Node && e.Cluster == n.cluster
}

// update records prefix p's merged entry and calls mark for each identity
// that gained its first pod on this node (true) or lost its last (false).
func (n *nodeIdentities) update(p netip.Prefix, e state.IPCacheEntry, ok bool, mark func(protocol.NumericIdentity, bool)) {
	old, had := n.byPrefix[p]
	now := n.onNode(e, ok)
	if had && now && old == e.Identity {
		return
	}
	if had {
		delete(n.byPrefix, p)
		if n.count[old]--; n.count[old] == 0 {
			delete(n.count, old)
			mark(old, false)
		}
	}
	if now {
		n.byPrefix[p] = e.Identity
		if n.count[e.Identity]++; n.count[e.Identity] == 1 {
			mark(e.Identity, true)
		}
	}
}

// identities returns how many identities have pods on this node.
func (n *nodeIdentities) identities() int { return len(n.count) }
