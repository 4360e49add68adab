// Package policy_test is the end-to-end suite of cross-cluster network
// policy (MeshNetworkPolicy) on the local lab: two clusters connected
// with meshops.Connect, real agents, real pods, real traffic through the
// WireGuard tunnel and the tunnel policy program.
package policy_test
