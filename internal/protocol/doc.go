// Package protocol is the mesh wire contract: the etcd keys and JSON values
// that a cluster's mesh apiserver writes and that readers in other clusters
// decode (see PROTOCOL.md in the design notes). The layout is that of Cilium
// ClusterMesh 1.18, so field names, their capitalisation and their order are
// part of the protocol and must not be tidied.
//
// Encoders produce exactly the documented bytes. Decoders validate what they
// read against the cluster it came from and return an error naming the
// problem; readers skip and count such values instead of failing.
//
// This package holds pure types and functions. It must not import anything
// from apiserver/, agent/, datapath/ or Kubernetes client libraries.
package protocol
