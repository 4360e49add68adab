package remotecluster

import (
	"errors"
	"fmt"
	"sync"
)

// ErrDuplicateClusterID is wrapped by the error a reader reports when a
// remote cluster announces a cluster ID that another cluster of the mesh
// already holds.
var ErrDuplicateClusterID = errors.New("duplicate cluster ID")

// ClusterIDs records which cluster holds each cluster ID, so that no two
// clusters of an agent's mesh share one. The local cluster holds its ID from
// the start. Safe for concurrent use.
type ClusterIDs struct {
	local   string // immutable
	localID uint32 // immutable

	mu   sync.Mutex
	byID map[uint32]string // guarded by mu
}

// NewClusterIDs returns a registry in which the local cluster holds localID.
func NewClusterIDs(local string, localID uint32) *ClusterIDs {
	return &ClusterIDs{byID: map[uint32]string{localID: local}, local: local, localID: localID}
}

// Claim gives id to cluster unless another cluster holds it. A cluster that
// already holds a different ID gives it up.
func (r *ClusterIDs) Claim(cluster string, id uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cluster == r.local {
		if id != r.localID {
			return fmt.Errorf("%w: the local cluster %q publishes cluster ID %d but this agent runs with cluster ID %d; make --cluster-id match the cluster's mesh apiserver", ErrDuplicateClusterID, cluster, id, r.localID)
		}
		return nil
	}
	if holder, ok := r.byID[id]; ok && holder != cluster {
		what := "cluster"
		if holder == r.local {
			what = "the local cluster"
		}
		return fmt.Errorf("%w: cluster %q announces cluster ID %d, which %s %q already uses; every cluster of a mesh needs its own ID, so give one of them a new ID", ErrDuplicateClusterID, cluster, id, what, holder)
	}
	r.releaseLocked(cluster)
	r.byID[id] = cluster
	return nil
}

// Release gives up any ID cluster holds. The local cluster keeps its ID.
func (r *ClusterIDs) Release(cluster string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.releaseLocked(cluster)
}

func (r *ClusterIDs) releaseLocked(cluster string) {
	if cluster == r.local {
		return
	}
	for id, holder := range r.byID {
		if holder == cluster {
			delete(r.byID, id)
		}
	}
}

// Holder returns the cluster holding id.
func (r *ClusterIDs) Holder(id uint32) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.byID[id]
	return c, ok
}
