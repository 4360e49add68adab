// Package state merges what every cluster of the mesh exports — identities
// with their labels, ipcache entries, nodes and global services — with the
// local cluster's own Kubernetes Services, into the view the node's
// datapath is programmed from. Each cluster's state is kept apart, so that a
// cluster that leaves the mesh is withdrawn exactly, and a cluster that
// misbehaves cannot disturb the others.
//
// Consumers (the reconcilers) subscribe to change sets: State records which
// keys changed and wakes the consumer, which then reads the desired values
// for just those keys. State never calls out while holding its lock, and
// consumers never hold it while they work.
//
// It must not import datapath/, apiserver/, Kubernetes client libraries or
// the agent packages that feed it.
package state
