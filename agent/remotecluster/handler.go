package remotecluster

import (
	"net/netip"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Handler receives the decoded state of one cluster and keeps it. A
// RemoteCluster calls its Handler from a single goroutine, so calls for one
// cluster never overlap; a call must not block for long, since the
// cluster's watch waits for it. Values passed in are not used by the
// RemoteCluster afterwards. Deletes of entries the Handler does not hold
// are no-ops: the reader keeps no copy of the keys (the Handler has them
// already), so it cannot tell.
type Handler interface {
	UpsertIdentity(protocol.Identity)
	DeleteIdentity(protocol.NumericIdentity)
	// UpsertIPCache and DeleteIPCache are keyed by the address in the etcd
	// key (the entry's IP).
	UpsertIPCache(*protocol.IPCacheEntry)
	DeleteIPCache(netip.Addr)
	UpsertNode(*protocol.Node)
	DeleteNode(name string)
	UpsertService(*protocol.ClusterService)
	DeleteService(namespace, name string)
	// Resync announces a (re)list of kind: every entry the cluster still
	// holds is upserted again before the matching Sweep.
	Resync(protocol.Kind)
	// Sweep deletes the entries of kind not upserted since the last
	// Resync of kind — what the cluster no longer holds — and returns how
	// many it deleted. Resync followed at once by Sweep withdraws kind.
	Sweep(protocol.Kind) int
	// Synced reports that the initial state of kind is complete in the
	// current connection: every entry the cluster held when its synced
	// canary was written has been delivered, and entries not seen again
	// since the connection was (re)established have been deleted.
	Synced(protocol.Kind)
}
