package remotecluster

import (
	"time"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// State is where a RemoteCluster is in its connection cycle.
type State int

const (
	// StateConnecting: dialling the cluster's mesh etcd and reading its
	// cluster-config.
	StateConnecting State = iota
	// StateRefused: the cluster-config conflicts with the mesh (duplicate
	// cluster ID, different maxConnectedClusters) or is missing or invalid;
	// the reader keeps retrying and holds none of the cluster's state.
	StateRefused
	// StateSyncing: connected, initial state not yet complete.
	StateSyncing
	// StateReady: connected and every kind synced.
	StateReady
	// StateDisconnected: the connection failed or was lost; the reader
	// waits before reconnecting and keeps the state it had.
	StateDisconnected
	// StateStopped: Run has returned.
	StateStopped
)

var stateNames = [...]string{"connecting", "refused", "syncing", "ready", "disconnected", "stopped"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// States lists every State, for metrics.
var States = []State{StateConnecting, StateRefused, StateSyncing, StateReady, StateDisconnected, StateStopped}

// KindStatus is a reader's view of one exported prefix.
type KindStatus struct {
	// Synced is true once the initial state of the kind is complete in
	// the current connection.
	Synced bool
	// DecodeErrors counts values skipped because they could not be
	// decoded or failed validation, over the reader's lifetime.
	DecodeErrors uint64
}

// Status is a snapshot of a RemoteCluster.
type Status struct {
	Cluster   string
	Endpoints []string
	// ClusterID is the ID from the cluster-config, 0 until it was read.
	ClusterID uint32
	State     State
	// Kinds has one entry per protocol.Kinds.
	Kinds map[protocol.Kind]KindStatus
	// LastError is the latest error, empty when none happened yet.
	LastError     string
	LastErrorTime time.Time
	// LastChange is when an entry last changed.
	LastChange time.Time
	// LastHeartbeat is the remote time carried by the last heartbeat.
	LastHeartbeat time.Time
	// Connections counts connections that got past the cluster-config
	// check.
	Connections uint64
}

// Connected reports whether the reader holds a working connection.
func (s Status) Connected() bool { return s.State == StateSyncing || s.State == StateReady }

// Ready reports whether every kind is synced.
func (s Status) Ready() bool { return s.State == StateReady }
