package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
type MeshNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec MeshNetworkPolicySpec `json:"spec"`
	// +optional
	Status MeshNetworkPolicyStatus `json:"status,omitempty"`
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
type MeshNetworkPolicySpec struct {
	// EndpointSelector selects the endpoints of this cluster, in the
	// policy's namespace, that the policy applies to. An empty selector
	// selects every endpoint of the namespace.
	//
	// Its operators are checked on admission, because a policy whose
	// endpointSelector is invalid can select nothing and so has no effect.
	// Peer selectors are checked by the agent instead (CEL over every
	// nested selector exceeds the apiserver's cost budget): a mistake there
	// shows in the Accepted condition, and the policy allows nothing
	// until it is fixed.
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
}

// IngressRule allows traffic from the peers FromEndpoints selects, on the
// ports ToPorts lists. Without FromEndpoints it allows any peer on those
// ports; without ToPorts, every port; with neither, nothing.
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
}

// EgressRule allows traffic to the peers ToEndpoints selects, on the ports
// ToPorts lists. Without ToEndpoints it allows any peer on those ports;
// without ToPorts, every port; with neither, nothing.
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
}

// PortRule lists destination ports; traffic to any of them matches.
type PortRule struct {
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=40
	Ports []PortProtocol `json:"ports"`
}

// PortProtocol is a destination port and its transport protocol.
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
