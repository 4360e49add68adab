package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of the Isthmus resources.
const GroupName = "isthmus.dev"

// SchemeGroupVersion is the group and version of this package's types.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

// Resource names (plural, as in the API path).
const (
	ResourceMeshNetworkPolicies = "meshnetworkpolicies"
	ResourceMeshAgents          = "meshagents"
)

// Kinds.
const (
	KindMeshNetworkPolicy = "MeshNetworkPolicy"
	KindMeshAgent         = "MeshAgent"
)

// Group-version-resources, for dynamic clients and RBAC rules.
var (
	MeshNetworkPolicyResource = SchemeGroupVersion.WithResource(ResourceMeshNetworkPolicies)
	MeshAgentResource         = SchemeGroupVersion.WithResource(ResourceMeshAgents)
)

var (
	// SchemeBuilder registers this package's types with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds this package's types to a scheme, e.g. client-go's
	// k8s.io/client-go/kubernetes/scheme.Scheme or a private one.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion,
		&MeshNetworkPolicy{}, &MeshNetworkPolicyList{},
		&MeshAgent{}, &MeshAgentList{},
	)
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
