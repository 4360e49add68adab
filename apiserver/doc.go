// Package apiserver is the mesh apiserver: one per cluster, the single
// writer of that cluster's mesh state. It runs (or connects to) the mesh
// etcd, sets up its users and roles, exports the cluster's nodes, pods and
// global services into it (exporter/), publishes the cluster config, a
// heartbeat and the synced canaries, and serves /healthz, /readyz and
// /metrics. cmd/isthmus-apiserver is a one-line main around Main.
//
// It must not import agent/, datapath/ or cmd/.
package apiserver
