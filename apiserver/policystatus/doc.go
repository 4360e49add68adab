// Package policystatus writes the status of a cluster's
// MeshNetworkPolicies. The mesh apiserver is the single writer of its
// cluster's mesh state, so it alone validates each policy, with
// apis/v1alpha1/validation (the definition the agents' compiler uses), and
// records the Accepted condition and observedGeneration through the status
// subresource; a policy found invalid also gets a Warning Event naming
// every problem. Agents only read policies: with hundreds of nodes, one
// writer per cluster keeps the status from flapping between agents and the
// API server from taking a write per node.
//
// A status write changes the object and so comes back as an update event;
// it is compared and found current, so nothing loops.
//
// It must not import agent/, datapath/ or cmd/.
package policystatus
