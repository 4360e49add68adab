package tunnel

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// SkipReason says why a remote node has no WireGuard peer.
type SkipReason string

const (
	// SkipNoKey: the node publishes no WireGuard public key (its agent has
	// not annotated its Node yet, or it runs without WireGuard).
	SkipNoKey SkipReason = "no-key"
	// SkipNoAddress: the node has no InternalIP to send to.
	SkipNoAddress SkipReason = "no-address"
	// SkipNoAllowedIPs: the node has no pod CIDR and no pod in the
	// ipcache, so nothing would be routed to it.
	SkipNoAllowedIPs SkipReason = "no-allowed-ips"
	// SkipRefused: the device refused the peer, e.g. because each of its
	// prefixes already belongs to another peer.
	SkipRefused SkipReason = "refused"
)

// SkipReasons lists every SkipReason, for metrics.
var SkipReasons = []SkipReason{SkipNoKey, SkipNoAddress, SkipNoAllowedIPs, SkipRefused}

// SkippedNode is a remote node without a peer, and why.
type SkippedNode struct {
	Node   state.NodeName
	Reason SkipReason
	// Detail is the device's error for SkipRefused.
	Detail string
}

// remoteNode is what the peer of one node is made of.
type remoteNode struct {
	name     state.NodeName
	key      string
	endpoint netip.Addr
	podCIDRs []netip.Prefix
}

// Desired is the peers the node should have.
type Desired struct {
	// Peers are sorted by name.
	Peers []wireguard.Peer
	// Skipped are the remote nodes without a peer, sorted by name.
	Skipped []SkippedNode
	// UsesIPCache is set when some remote node has no pod CIDR, so that
	// ipcache changes change the peers.
	UsesIPCache bool
}

// DesiredPeers computes the WireGuard peers of the node: one per node of
// every cluster but localCluster (traffic within the cluster stays with
// its CNI), sending to the node's InternalIP (of the family preferV4
// asks for where the node has both) on port, allowing and routing the
// node's pod CIDRs or, for a node without any, the /32 and /128 of its
// pods in the ipcache. Nodes that cannot have a peer are listed as
// skipped.
//
// protocol.Node carries no WireGuard port, so every node is assumed to
// listen on port, the one configured here.
func DesiredPeers(st *state.State, localCluster string, port uint16, preferV4 bool) Desired {
	var (
		nodes   []remoteNode
		peers   []wireguard.Peer
		skipped []SkippedNode
	)
	st.Nodes(func(n *protocol.Node) {
		if n.Cluster == localCluster {
			return
		}
		name := state.NodeName{Cluster: n.Cluster, Name: n.Name}
		ep := n.InternalIP(preferV4)
		if !ep.IsValid() {
			ep = n.InternalIP(!preferV4)
		}
		switch {
		case n.WireguardPubKey == "":
			skipped = append(skipped, SkippedNode{Node: name, Reason: SkipNoKey})
			return
		case !ep.IsValid():
			skipped = append(skipped, SkippedNode{Node: name, Reason: SkipNoAddress})
			return
		}
		nodes = append(nodes, remoteNode{name: name, key: n.WireguardPubKey, endpoint: ep, podCIDRs: n.PodCIDRs()})
	})

	// Nodes without a pod CIDR get their pods' addresses, found in one
	// pass over the ipcache, and only when there is such a node.
	podsOf := map[netip.Addr][]netip.Prefix{}
	clusterOf := map[netip.Addr]string{}
	for _, n := range nodes {
		if len(n.podCIDRs) == 0 {
			podsOf[n.endpoint] = nil
			clusterOf[n.endpoint] = n.name.Cluster
		}
	}
	if len(podsOf) > 0 {
		st.AllIPCache(func(p netip.Prefix, e state.IPCacheEntry) {
			if e.Node || !p.IsSingleIP() {
				return
			}
			if c, ok := clusterOf[e.TunnelEndpoint]; ok && c == e.Cluster {
				podsOf[e.TunnelEndpoint] = append(podsOf[e.TunnelEndpoint], p)
			}
		})
	}

	for _, n := range nodes {
		allowed := n.podCIDRs
		if len(allowed) == 0 {
			allowed = podsOf[n.endpoint]
			slices.SortFunc(allowed, comparePrefix)
		}
		if len(allowed) == 0 {
			skipped = append(skipped, SkippedNode{Node: n.name, Reason: SkipNoAllowedIPs})
			continue
		}
		peers = append(peers, wireguard.Peer{
			Name:       n.name.String(),
			PublicKey:  n.key,
			Endpoint:   netip.AddrPortFrom(n.endpoint, port),
			AllowedIPs: allowed,
		})
	}
	slices.SortFunc(peers, func(a, b wireguard.Peer) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(skipped, func(a, b SkippedNode) int { return cmp.Compare(a.Node.String(), b.Node.String()) })
	return Desired{Peers: peers, Skipped: skipped, UsesIPCache: len(podsOf) > 0}
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// keepCurrent adds to wanted the device's current peers that wanted does
// not name, for the time before the first complete view of the mesh: a
// restarted agent must not drop peers (and the traffic through them) of
// clusters it has not read again yet.
func keepCurrent(wanted []wireguard.Peer, current []wireguard.PeerStatus) []wireguard.Peer {
	have := make(map[string]bool, len(wanted))
	for _, p := range wanted {
		have[p.PublicKey] = true
	}
	out := slices.Clone(wanted)
	for _, c := range current {
		if have[c.PublicKey] || !c.Endpoint.IsValid() {
			continue
		}
		name := c.Name
		if name == "" {
			name = "kept:" + c.PublicKey
		}
		out = append(out, wireguard.Peer{Name: name, PublicKey: c.PublicKey, Endpoint: c.Endpoint, AllowedIPs: c.AllowedIPs})
	}
	return out
}
