package v1alpha1

import "k8s.io/apimachinery/pkg/runtime"

// The types below declare the fields of CiliumNetworkPolicy that
// MeshNetworkPolicy does not support. They are declared, rather than left
// out, because the API server silently prunes fields a CRD does not
// declare: a carried-over rule with `fromCIDR` and `toPorts` would lose its
// peer and become "any peer on these ports". Declared, each is refused on
// admission by a CEL rule on the object holding it (a `has()` test, cheap
// enough for the CRD's cost budget), with a message saying what to do; the
// agent's and apiserver's validation (apis/v1alpha1/validation) refuses
// them too, for objects that did not pass through this CRD.
//
// Each has the outline of its CiliumNetworkPolicy shape (a list of strings,
// a list of objects, an object), with object contents left free-form: a
// CEL rule can only test a field whose schema has a type. Their Go fields
// exist only for that; leave them empty.

// UnsupportedSpecFields are the fields of CiliumNetworkPolicy's spec that
// MeshNetworkPolicy refuses.
type UnsupportedSpecFields struct {
	// IngressDeny: not supported.
	// +optional
	IngressDeny []runtime.RawExtension `json:"ingressDeny,omitempty"`
	// EgressDeny: not supported.
	// +optional
	EgressDeny []runtime.RawExtension `json:"egressDeny,omitempty"`
	// NodeSelector: not supported.
	// +optional
	NodeSelector *runtime.RawExtension `json:"nodeSelector,omitempty"`
	// EnableDefaultDeny: not supported.
	// +optional
	EnableDefaultDeny *runtime.RawExtension `json:"enableDefaultDeny,omitempty"`
	// Labels: not supported.
	// +optional
	Labels []runtime.RawExtension `json:"labels,omitempty"`
	// Log: not supported.
	// +optional
	Log *runtime.RawExtension `json:"log,omitempty"`
}

// UnsupportedIngressFields are the fields of CiliumNetworkPolicy's ingress
// rules that MeshNetworkPolicy refuses.
type UnsupportedIngressFields struct {
	// FromCIDR: not supported.
	// +optional
	FromCIDR []string `json:"fromCIDR,omitempty"`
	// FromCIDRSet: not supported.
	// +optional
	FromCIDRSet []runtime.RawExtension `json:"fromCIDRSet,omitempty"`
	// FromEntities: not supported.
	// +optional
	FromEntities []string `json:"fromEntities,omitempty"`
	// FromGroups: not supported.
	// +optional
	FromGroups []runtime.RawExtension `json:"fromGroups,omitempty"`
	// FromNodes: not supported.
	// +optional
	FromNodes []runtime.RawExtension `json:"fromNodes,omitempty"`
	// FromRequires: not supported.
	// +optional
	FromRequires []runtime.RawExtension `json:"fromRequires,omitempty"`
	// ICMPs: not supported.
	// +optional
	ICMPs []runtime.RawExtension `json:"icmps,omitempty"`
	// Authentication: not supported.
	// +optional
	Authentication *runtime.RawExtension `json:"authentication,omitempty"`
}

// UnsupportedEgressFields are the fields of CiliumNetworkPolicy's egress
// rules that MeshNetworkPolicy refuses.
type UnsupportedEgressFields struct {
	// ToCIDR: not supported.
	// +optional
	ToCIDR []string `json:"toCIDR,omitempty"`
	// ToCIDRSet: not supported.
	// +optional
	ToCIDRSet []runtime.RawExtension `json:"toCIDRSet,omitempty"`
	// ToEntities: not supported.
	// +optional
	ToEntities []string `json:"toEntities,omitempty"`
	// ToFQDNs: not supported.
	// +optional
	ToFQDNs []runtime.RawExtension `json:"toFQDNs,omitempty"`
	// ToServices: not supported.
	// +optional
	ToServices []runtime.RawExtension `json:"toServices,omitempty"`
	// ToGroups: not supported.
	// +optional
	ToGroups []runtime.RawExtension `json:"toGroups,omitempty"`
	// ToNodes: not supported.
	// +optional
	ToNodes []runtime.RawExtension `json:"toNodes,omitempty"`
	// ToRequires: not supported.
	// +optional
	ToRequires []runtime.RawExtension `json:"toRequires,omitempty"`
	// ICMPs: not supported.
	// +optional
	ICMPs []runtime.RawExtension `json:"icmps,omitempty"`
	// Authentication: not supported.
	// +optional
	Authentication *runtime.RawExtension `json:"authentication,omitempty"`
}

// UnsupportedPortRuleFields are the L7 fields of CiliumNetworkPolicy's
// port rules, which MeshNetworkPolicy refuses.
type UnsupportedPortRuleFields struct {
	// Rules: not supported.
	// +optional
	Rules *runtime.RawExtension `json:"rules,omitempty"`
	// TerminatingTLS: not supported.
	// +optional
	TerminatingTLS *runtime.RawExtension `json:"terminatingTLS,omitempty"`
	// OriginatingTLS: not supported.
	// +optional
	OriginatingTLS *runtime.RawExtension `json:"originatingTLS,omitempty"`
	// ServerNames: not supported.
	// +optional
	ServerNames []string `json:"serverNames,omitempty"`
	// Listener: not supported.
	// +optional
	Listener *runtime.RawExtension `json:"listener,omitempty"`
}
