// Package logfields names the structured log keys every component uses, so
// that one query finds a cluster's or a node's lines across components.
package logfields

const (
	Cluster    = "cluster"
	ClusterID  = "clusterID"
	Node       = "node"
	Identity   = "identity"
	Service    = "service"
	Namespace  = "namespace"
	Pod        = "pod"
	Key        = "key"
	Prefix     = "prefix"
	Kind       = "kind"
	IP         = "ip"
	Endpoint   = "endpoint"
	Error      = "err"
	Count      = "count"
	Duration   = "duration"
	Map        = "map"
	Peer       = "peer"
	Device     = "device"
	Policy     = "policy"
	Component  = "component"
	Revision   = "revision"
	Generation = "generation"
)
