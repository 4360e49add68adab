// Package meshpolicy enforces MeshNetworkPolicies on one node. It feeds the
// policy compiler (agent/policy) with
//
//   - the local cluster's MeshNetworkPolicies, from a client-go informer;
//   - the identities of every cluster, from the merged state's identity
//     changes (agent/state);
//   - the identities with pods on this node: the local cluster's ipcache
//     entries whose host is this node (IPCacheEntry.LocalNode, which the
//     state derives from the pods' HostIP and this node's addresses). The
//     tunnel program learns a local endpoint's identity from the same
//     ipcache, so these are exactly the identities it can meet on this
//     node; compiling for them alone keeps the policy map bounded by the
//     node's pods rather than the cluster's (see BENCHMARKS.md);
//
// and writes the compiler's output into the datapath's policy and
// enforcement maps (datapath/maps) in the order policy.Changes.Apply gives,
// then bumps the policy revision so that tracked flows are checked again.
//
// Restarts. Nothing is written until the policies have been listed and the
// agent's initial sync is complete (AllowPrune): until then the maps keep
// what the previous agent wrote, and the datapath enforces that. The first
// write is a full reconcile of the compiler's snapshot against the maps,
// which writes only the differences (new entries first, deletions last),
// and full reconciles repeat periodically to repair drift.
//
// It must not import apiserver/, cmd/, or the agent packages that feed the
// state (remotecluster, clustermesh, localservices).
package meshpolicy
