package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// MeshNetworkPolicy allows cross-cluster traffic to and from the pods of its
// namespace, by the security labels of the pods on either side. It follows
// the L3/L4 part of CiliumNetworkPolicy, so such rules carry over.
//
// It governs only traffic that crosses the mesh tunnel between clusters;
// traffic inside a cluster stays the business of the cluster's CNI.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=mnp,categories=isthmus
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`,priority=1
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].message`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="!has(self.specs)",message="specs is not supported: write one MeshNetworkPolicy per rule, each with spec",fieldPath=".specs",reason=FieldValueForbidden
type MeshNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec MeshNetworkPolicySpec `json:"spec"`
	// +optional
	Status MeshNetworkPolicyStatus `json:"status,omitempty"`

	// Specs (CiliumNetworkPolicy's list of rules): not supported, declared
	// only to be refused; see UnsupportedSpecFields.
	// +optional
	Specs []runtime.RawExtension `json:"specs,omitempty"`
}

// MeshNetworkPolicySpec says which local endpoints the policy applies to and
// which cross-cluster traffic they may receive and send.
//
// Selectors match security labels: a pod's labels plus
// io.kubernetes.pod.namespace, io.cilium.k8s.policy.cluster,
// io.cilium.k8s.policy.serviceaccount and
// io.cilium.k8s.namespace.labels.<key>. A key may carry the source prefix
// "k8s:" or "any:", as in CiliumNetworkPolicy.
//
// An endpoint no policy selects sends and receives any cross-cluster traffic
// (unless the mesh runs with default deny). Once a policy with ingress rules
// selects it, cross-cluster traffic into it is dropped unless some rule
// allows it; egress rules likewise for traffic out of it. Replies to allowed
// connections always pass.
//
// The fields of CiliumNetworkPolicy that MeshNetworkPolicy does not support
// are refused on admission (see UnsupportedSpecFields).
//
// +kubebuilder:validation:XValidation:rule="!has(self.ingressDeny)",message="ingressDeny is not supported: MeshNetworkPolicy only allows traffic; once a policy with ingress rules selects an endpoint, cross-cluster ingress no rule allows is denied",fieldPath=".ingressDeny",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.egressDeny)",message="egressDeny is not supported: MeshNetworkPolicy only allows traffic; once a policy with egress rules selects an endpoint, cross-cluster egress no rule allows is denied",fieldPath=".egressDeny",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.nodeSelector)",message="nodeSelector is not supported: MeshNetworkPolicy applies to the pods endpointSelector selects, not to nodes",fieldPath=".nodeSelector",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.enableDefaultDeny)",message="enableDefaultDeny is not supported: a policy with ingress (egress) rules always puts the endpoints it selects into default deny for that direction",fieldPath=".enableDefaultDeny",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.labels)",message="labels is not supported: put labels in metadata.labels",fieldPath=".labels",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.log)",message="log is not supported: flow events name the policy that decided",fieldPath=".log",reason=FieldValueForbidden
type MeshNetworkPolicySpec struct {
	// EndpointSelector selects the endpoints of this cluster, in the
	// policy's namespace, that the policy applies to. An empty selector
	// selects every endpoint of the namespace.
	//
	// Its operators are checked on admission, because a policy whose
	// endpointSelector is invalid can select nothing and so has no effect.
	// Peer selectors are checked after admission instead (CEL over every
	// nested selector exceeds the API server's cost budget): the mesh
	// apiserver reports a mistake there in the Accepted condition, and the
	// policy allows nothing until it is fixed.
	// +required
	// +kubebuilder:validation:XValidation:rule=`!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])`,message="matchExpressions operator must be one of In, NotIn, Exists, DoesNotExist"
	// +kubebuilder:validation:XValidation:rule=`!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn'] ? has(e.values) && size(e.values) > 0 : !(e.operator in ['Exists', 'DoesNotExist']) || !has(e.values) || size(e.values) == 0)`,message="matchExpressions with operator In or NotIn need values; Exists and DoesNotExist take none"
	EndpointSelector metav1.LabelSelector `json:"endpointSelector"`

	// Ingress lists what may connect to the selected endpoints from other
	// clusters. A non-empty list puts the endpoints into default deny for
	// cross-cluster ingress; a rule `{}` allows nothing (deny all).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Ingress []IngressRule `json:"ingress,omitempty"`

	// Egress lists what the selected endpoints may connect to in other
	// clusters. A non-empty list puts the endpoints into default deny for
	// cross-cluster egress; a rule `{}` allows nothing (deny all).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Egress []EgressRule `json:"egress,omitempty"`

	// Description says what the policy is for; it has no effect.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Description string `json:"description,omitempty"`

	UnsupportedSpecFields `json:",inline"`
}

// IngressRule allows traffic from the peers FromEndpoints selects, on the
// ports ToPorts lists. Without FromEndpoints it allows any peer on those
// ports; without ToPorts, every port; with neither, nothing.
//
// The peer kinds of CiliumNetworkPolicy other than endpoints are refused on
// admission (see UnsupportedIngressFields): removed silently, they would
// leave a rule that allows any peer on its ports.
//
// +kubebuilder:validation:XValidation:rule="!has(self.fromCIDR)",message="fromCIDR is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with fromEndpoints",fieldPath=".fromCIDR",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.fromCIDRSet)",message="fromCIDRSet is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with fromEndpoints",fieldPath=".fromCIDRSet",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.fromEntities)",message="fromEntities is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with fromEndpoints",fieldPath=".fromEntities",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.fromGroups)",message="fromGroups is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with fromEndpoints",fieldPath=".fromGroups",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.fromNodes)",message="fromNodes is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with fromEndpoints",fieldPath=".fromNodes",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.fromRequires)",message="fromRequires is not supported: add its requirements to each fromEndpoints selector instead",fieldPath=".fromRequires",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.icmps)",message="icmps is not supported: MeshNetworkPolicy matches TCP, UDP and SCTP ports",fieldPath=".icmps",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.authentication)",message="authentication is not supported: cross-cluster traffic is encrypted node to node by WireGuard; there is no per-workload authentication",fieldPath=".authentication",reason=FieldValueForbidden
type IngressRule struct {
	// FromEndpoints selects peers by their security labels; traffic from
	// a peer any of them selects matches.
	//
	// A selector that does not mention io.cilium.k8s.policy.cluster
	// matches only this cluster, whose traffic never crosses the mesh: to
	// allow peers of other clusters, name them (matchLabels, or
	// matchExpressions on that key, e.g. operator Exists for every
	// cluster). A selector that mentions neither
	// io.kubernetes.pod.namespace nor a namespace label
	// (io.cilium.k8s.namespace.labels.<key>) matches only the policy's
	// namespace (in every cluster it matches). A cluster that does not
	// exist matches nothing.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	FromEndpoints []metav1.LabelSelector `json:"fromEndpoints,omitempty"`

	// ToPorts restricts the rule to these destination ports of the
	// selected endpoints.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	ToPorts []PortRule `json:"toPorts,omitempty"`

	UnsupportedIngressFields `json:",inline"`
}

// EgressRule allows traffic to the peers ToEndpoints selects, on the ports
// ToPorts lists. Without ToEndpoints it allows any peer on those ports;
// without ToPorts, every port; with neither, nothing.
//
// The peer kinds of CiliumNetworkPolicy other than endpoints are refused on
// admission (see UnsupportedEgressFields), as in IngressRule.
//
// +kubebuilder:validation:XValidation:rule="!has(self.toCIDR)",message="toCIDR is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with toEndpoints",fieldPath=".toCIDR",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.toCIDRSet)",message="toCIDRSet is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with toEndpoints",fieldPath=".toCIDRSet",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.toEntities)",message="toEntities is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with toEndpoints",fieldPath=".toEntities",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.toFQDNs)",message="toFQDNs is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with toEndpoints",fieldPath=".toFQDNs",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.toServices)",message="toServices is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select the service's pods with toEndpoints",fieldPath=".toServices",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.toGroups)",message="toGroups is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with toEndpoints",fieldPath=".toGroups",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.toNodes)",message="toNodes is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with toEndpoints",fieldPath=".toNodes",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.toRequires)",message="toRequires is not supported: add its requirements to each toEndpoints selector instead",fieldPath=".toRequires",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.icmps)",message="icmps is not supported: MeshNetworkPolicy matches TCP, UDP and SCTP ports",fieldPath=".icmps",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.authentication)",message="authentication is not supported: cross-cluster traffic is encrypted node to node by WireGuard; there is no per-workload authentication",fieldPath=".authentication",reason=FieldValueForbidden
type EgressRule struct {
	// ToEndpoints selects peers by their security labels, with the same
	// cluster and namespace defaults as IngressRule.FromEndpoints.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	ToEndpoints []metav1.LabelSelector `json:"toEndpoints,omitempty"`

	// ToPorts restricts the rule to these destination ports of the peers.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	ToPorts []PortRule `json:"toPorts,omitempty"`

	UnsupportedEgressFields `json:",inline"`
}

// PortRule lists destination ports; traffic to any of them matches.
//
// MeshNetworkPolicy is L3/L4 only: CiliumNetworkPolicy's L7 fields are
// refused on admission (see UnsupportedPortRuleFields).
//
// +kubebuilder:validation:XValidation:rule="!has(self.rules)",message="rules (L7) is not supported: MeshNetworkPolicy allows whole ports; remove the rules, knowing every request on the port is then allowed",fieldPath=".rules",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.terminatingTLS)",message="terminatingTLS is not supported: MeshNetworkPolicy is L3/L4 only",fieldPath=".terminatingTLS",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.originatingTLS)",message="originatingTLS is not supported: MeshNetworkPolicy is L3/L4 only",fieldPath=".originatingTLS",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.serverNames)",message="serverNames is not supported: MeshNetworkPolicy is L3/L4 only",fieldPath=".serverNames",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="!has(self.listener)",message="listener is not supported: MeshNetworkPolicy is L3/L4 only",fieldPath=".listener",reason=FieldValueForbidden
type PortRule struct {
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=40
	Ports []PortProtocol `json:"ports"`

	UnsupportedPortRuleFields `json:",inline"`
}

// PortProtocol is a destination port and its transport protocol.
//
// +kubebuilder:validation:XValidation:rule="!has(self.endPort)",message="endPort is not supported: list each port of the range",fieldPath=".endPort",reason=FieldValueForbidden
type PortProtocol struct {
	// Port is the destination port number, 1 to 65535, written as a string
	// as in CiliumNetworkPolicy. Named ports are not supported. Omitted, it
	// matches every port of Protocol.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:XValidation:rule=`self.matches('^[0-9]+$')`,message="named ports are not supported: give the port number (1-65535)"
	// +kubebuilder:validation:XValidation:rule=`!self.matches('^[0-9]+$') || (size(self) <= 5 && int(self) >= 1 && int(self) <= 65535)`,message="port must be a number from 1 to 65535"
	Port string `json:"port,omitempty"`

	// Protocol is the transport protocol; ANY means TCP, UDP and SCTP.
	// +optional
	// +kubebuilder:default=ANY
	Protocol Protocol `json:"protocol,omitempty"`

	// EndPort (CiliumNetworkPolicy's port range end): not supported,
	// declared only to be refused; see UnsupportedSpecFields.
	// +optional
	EndPort *int32 `json:"endPort,omitempty"`
}

// Protocol is a transport protocol a rule can name.
// +kubebuilder:validation:Enum=TCP;UDP;SCTP;ANY
type Protocol string

// Protocols.
const (
	ProtocolTCP  Protocol = "TCP"
	ProtocolUDP  Protocol = "UDP"
	ProtocolSCTP Protocol = "SCTP"
	// ProtocolAny, or an empty Protocol, matches TCP, UDP and SCTP.
	ProtocolAny Protocol = "ANY"
)

// MeshNetworkPolicyStatus reports whether the policy was accepted.
type MeshNetworkPolicyStatus struct {
	// Conditions: type Accepted is True when the policy is in force, and
	// False with reason Invalid and a message naming what is wrong when it
	// is not.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// ObservedGeneration is the metadata.generation the conditions
	// describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// Condition types and reasons of MeshNetworkPolicy.
const (
	// ConditionAccepted says whether the policy is in force.
	ConditionAccepted = "Accepted"
	// ReasonAccepted goes with Accepted=True.
	ReasonAccepted = "Accepted"
	// ReasonInvalid goes with Accepted=False: the spec has an error the
	// message names. See the compiler (agent/policy) for what an invalid
	// policy does.
	ReasonInvalid = "Invalid"
)

// MeshNetworkPolicyList is a list of MeshNetworkPolicy.
//
// +kubebuilder:object:root=true
type MeshNetworkPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshNetworkPolicy `json:"items"`
}
