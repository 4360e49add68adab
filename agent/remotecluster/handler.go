package remotecluster

import (
	"net/netip"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Handler receives the decoded state of one cluster. A RemoteCluster calls
// its Handler from a single goroutine, so calls for one cluster never
// overlap; a call must not block for long, since the cluster's watch waits
// for it. Values passed in are not used by the RemoteCluster afterwards.
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
	// Synced reports that the initial state of kind is complete in the
	// current connection: every entry the cluster held when its synced
	// canary was written has been delivered, and entries not seen again
	// since the connection was (re)established have been deleted.
	Synced(protocol.Kind)
}
