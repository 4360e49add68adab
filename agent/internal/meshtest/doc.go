// Package meshtest runs real embedded etcd servers shaped like a cluster's
// mesh etcd (mutual TLS, client-certificate users, etcd auth with the
// read-only remote role of PROTOCOL.md "Access") and publishes protocol
// values into them, for the agent's integration tests and benchmarks.
//
// It is test support: only tests and benchmarks import it. It must not
// import agent packages other than the ones under agent/internal.
package meshtest
