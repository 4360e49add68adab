// Package policy compiles MeshNetworkPolicies (apis/v1alpha1) against the
// known security identities of every cluster into the desired contents of
// the datapath's cross-cluster policy maps (datapath/maps): allow entries
// keyed by (direction, local identity, remote identity, port, protocol),
// and the set of local identities in default deny per direction. It keeps
// both current incrementally: a new identity only visits the selectors
// that can match it (selectors are indexed by one of their label
// requirements), and a policy change recompiles that policy alone.
//
// The core is pure: no Kubernetes client, no BPF, no logging. The agent
// feeds it from its informers and remote-cluster watchers, writes
// Compiler.TakeChanges with Changes.Apply (or reconciles Snapshot), and
// bumps the datapath's policy revision after each write.
//
// # Semantics
//
// Policy is enforced only on traffic that crosses the mesh tunnel;
// traffic inside a cluster is the local CNI's business.
//
//   - Subjects. A policy's endpointSelector selects identities of the local
//     cluster in the policy's namespace: it is ANDed with
//     io.cilium.k8s.policy.cluster=<local> and
//     io.kubernetes.pod.namespace=<policy namespace>, whatever it says
//     itself (so naming another namespace selects nothing). An empty
//     endpointSelector selects the whole namespace.
//   - Default deny per direction. An identity no policy selects passes all
//     cross-cluster traffic (unless the mesh-wide default deny,
//     maps.MeshSettings.DefaultDeny, is on; that switch is the agent's, not
//     the compiler's). A policy with a non-empty ingress list puts the
//     identities it selects into default deny for ingress; egress
//     likewise. `ingress: []` is the same as no ingress. Policies add up:
//     an identity is in default deny if any policy puts it there, and
//     traffic is allowed if any rule of any policy allows it.
//   - Peer defaults. A peer selector (fromEndpoints, toEndpoints) that has
//     no requirement on io.cilium.k8s.policy.cluster matches the local
//     cluster only; one with no requirement on io.kubernetes.pod.namespace
//     nor on a namespace label (io.cilium.k8s.namespace.labels.<key>)
//     matches the policy's namespace only (in each cluster it matches).
//     Any requirement on the key, in matchLabels or matchExpressions and
//     with any operator, replaces the default: {cluster Exists} spans
//     every cluster, {cluster In [a, b]} clusters a and b, {cluster NotIn
//     [b]} every cluster but b, {cluster DoesNotExist} nothing (every
//     identity has a cluster). Likewise {namespace Exists} spans every
//     namespace, and {io.cilium.k8s.namespace.labels.team=x} every
//     namespace labelled team=x.
//   - Local peers. Peers of the local cluster match (Compiler.Selection
//     lists them) but produce no entries, as their traffic never crosses
//     the tunnel. So `fromEndpoints: [{}]`, which by the defaults above is
//     "every endpoint of this namespace in this cluster", allows no
//     cross-cluster traffic; it still puts the subjects into default deny.
//   - A cluster, namespace or label that matches no identity matches
//     nothing, until identities that match it appear: a policy naming a
//     cluster that is not in the mesh allows nothing.
//   - Rules. A rule with peers and toPorts allows those peers on those
//     ports; with peers only, on every port and protocol; with toPorts
//     only, every remote identity on those ports (the map's wildcard
//     remote identity 0, which also covers addresses the ipcache does not
//     know); with neither (`{}`), nothing.
//   - Ports. A port is a number from 1 to 65535 as a string; named ports
//     are refused. Protocol ANY (or none) with a port means TCP, UDP and
//     SCTP on it, because a map entry with a port needs a protocol; a
//     protocol without a port means every port of it; ANY without a port
//     means everything. Within a rule, a pair another pair covers is
//     dropped.
//   - Rule IDs. Each policy gets a rule ID, kept across updates of the
//     policy; every entry carries the lowest rule ID of the policies that
//     produce it, and PolicyForRule turns a flow event's rule ID back into
//     the policy.
//   - Invalid policies (a bad selector operator, key or value; a bad or
//     named port; an unknown protocol; a CiliumNetworkPolicy field
//     MeshNetworkPolicy does not support, such as fromCIDR or L7 rules),
//     as apis/v1alpha1/validation defines them, get Accepted=False with
//     reason Invalid and every problem named (AcceptedCondition). Such a policy
//     allows nothing, but when its endpointSelector is valid the endpoints
//     it selects still go into default deny in the directions it has rules
//     for, exactly as if it were valid: a mistake in a policy must never
//     open traffic the policy was written to restrict (fail closed). The
//     price is that a broken update of a working policy cuts the traffic
//     it allowed until it is fixed; the CRD's OpenAPI and CEL validation
//     refuses most such mistakes before they are stored. When the
//     endpointSelector itself is invalid the policy selects nothing and
//     has no effect.
//   - Node scope. With Config.NodeScoped only identities marked with
//     SetNodeIdentity are subjects, which bounds the map to the endpoints
//     of one node (see BENCHMARKS.md for why that matters).
//
// It must not import client-go, apiserver/, cmd/ or other agent/
// packages; the agent imports it.
package policy
