// Package labe2e holds the node datapath's end-to-end tests: real
// isthmus-agent processes in the nodes of a local lab (internal/lab), two
// clusters connected with meshops.Connect, and traffic between their pods
// through the agents' WireGuard tunnel, tunnel policy and socket load
// balancer. It has tests only.
//
// It must not be imported.
package labe2e
