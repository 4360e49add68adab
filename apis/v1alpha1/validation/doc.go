// Package validation checks MeshNetworkPolicies completely: what the CRD's
// OpenAPI and CEL rules refuse on admission, what they cannot afford to
// check (peer selectors: CEL over every nested selector exceeds the API
// server's cost budget), and objects that never passed through the CRD
// (built in Go, or stored under an older CRD version).
//
// It is the one definition of a valid policy: the mesh apiserver reports
// its result in each policy's Accepted condition (AcceptedCondition,
// SetAccepted), and the agent's compiler (agent/policy) parses policies
// with ParseSelector and ParsePort and refuses what ValidateMeshNetworkPolicy
// refuses.
//
// It must import nothing but k8s.io/apimachinery and apis/v1alpha1, so that
// the apiserver, the agent and users' tools can all afford it.
package validation
