// Package kvstore writes a cluster's mesh state into etcd efficiently: the
// Writer skips values etcd already holds, batches changes into
// transactions of bounded size, retries failures, sweeps keys a restart left
// behind, and tells when everything asked for has been committed. Session
// keeps keys that must vanish with the apiserver (heartbeat, synced
// canaries) attached to a lease.
//
// It must not import agent/, datapath/, cmd/ or Kubernetes clients.
package kvstore
