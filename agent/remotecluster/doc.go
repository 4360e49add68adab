// Package remotecluster reads one cluster's mesh state from that cluster's
// mesh etcd, exactly as PROTOCOL.md "Readers" prescribes: it checks the
// cluster-config (cluster ID unique in the mesh, maxConnectedClusters equal to
// ours), lists then watches every exported prefix from the list's revision,
// honours the synced canaries, sweeps entries not seen again after any
// reconnect or relist, reconnects when the heartbeat stops, and skips (logs
// and counts) every value it cannot decode or that fails validation.
//
// A RemoteCluster hands decoded values to a Handler and knows nothing about
// how they are merged or where they go; the agent's own cluster is read
// through the same code path as every remote one.
//
// It must not import agent/state, datapath/, apiserver/ or Kubernetes client
// libraries.
package remotecluster
