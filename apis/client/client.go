package client

import (
	"context"
	"fmt"
	"net/http"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

// MeshNetworkPolicyInterface reads and writes the MeshNetworkPolicies of
// one namespace (or, for List and Watch, of all when the namespace is "").
type MeshNetworkPolicyInterface interface {
	Create(ctx context.Context, p *v1alpha1.MeshNetworkPolicy, opts metav1.CreateOptions) (*v1alpha1.MeshNetworkPolicy, error)
	Update(ctx context.Context, p *v1alpha1.MeshNetworkPolicy, opts metav1.UpdateOptions) (*v1alpha1.MeshNetworkPolicy, error)
	// UpdateStatus writes only the status (the status subresource).
	UpdateStatus(ctx context.Context, p *v1alpha1.MeshNetworkPolicy, opts metav1.UpdateOptions) (*v1alpha1.MeshNetworkPolicy, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*v1alpha1.MeshNetworkPolicy, error)
	List(ctx context.Context, opts metav1.ListOptions) (*v1alpha1.MeshNetworkPolicyList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*v1alpha1.MeshNetworkPolicy, error)
}

// MeshAgentInterface reads and writes MeshAgents (cluster-scoped). An agent
// creates its MeshAgent, then writes it with UpdateStatus: the object has
// no spec, and Update ignores status changes.
type MeshAgentInterface interface {
	Create(ctx context.Context, a *v1alpha1.MeshAgent, opts metav1.CreateOptions) (*v1alpha1.MeshAgent, error)
	Update(ctx context.Context, a *v1alpha1.MeshAgent, opts metav1.UpdateOptions) (*v1alpha1.MeshAgent, error)
	// UpdateStatus writes only the status (the status subresource).
	UpdateStatus(ctx context.Context, a *v1alpha1.MeshAgent, opts metav1.UpdateOptions) (*v1alpha1.MeshAgent, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*v1alpha1.MeshAgent, error)
	List(ctx context.Context, opts metav1.ListOptions) (*v1alpha1.MeshAgentList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*v1alpha1.MeshAgent, error)
}

// Clientset is a typed client of the isthmus.dev/v1alpha1 API.
type Clientset struct {
	rest   rest.Interface
	params runtime.ParameterCodec
}

// NewScheme returns a scheme holding the isthmus.dev/v1alpha1 types, for
// encoders, decoders and clients that need one.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("register %s types: %w", v1alpha1.SchemeGroupVersion, err)
	}
	return s, nil
}

// NewForConfig returns a Clientset for the cluster cfg points at. cfg is
// copied, not changed.
func NewForConfig(cfg *rest.Config) (*Clientset, error) {
	c := *cfg
	if err := setConfigDefaults(&c); err != nil {
		return nil, err
	}
	h, err := rest.HTTPClientFor(&c)
	if err != nil {
		return nil, fmt.Errorf("isthmus.dev client: %w", err)
	}
	return NewForConfigAndClient(&c, h)
}

// NewForConfigAndClient is NewForConfig sharing an existing HTTP client
// (and so its connections) with other clients.
func NewForConfigAndClient(cfg *rest.Config, h *http.Client) (*Clientset, error) {
	c := *cfg
	if err := setConfigDefaults(&c); err != nil {
		return nil, err
	}
	rc, err := rest.RESTClientForConfigAndClient(&c, h)
	if err != nil {
		return nil, fmt.Errorf("isthmus.dev client: %w", err)
	}
	s, err := NewScheme()
	if err != nil {
		return nil, err
	}
	return &Clientset{rest: rc, params: runtime.NewParameterCodec(s)}, nil
}

func setConfigDefaults(c *rest.Config) error {
	s, err := NewScheme()
	if err != nil {
		return err
	}
	gv := v1alpha1.SchemeGroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/apis"
	c.NegotiatedSerializer = serializer.NewCodecFactory(s).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return nil
}

// RESTClient returns the underlying REST client.
func (c *Clientset) RESTClient() rest.Interface { return c.rest }

// MeshNetworkPolicies returns a client for the policies of namespace; ""
// lists and watches all namespaces.
func (c *Clientset) MeshNetworkPolicies(namespace string) MeshNetworkPolicyInterface {
	return gentype.NewClientWithList(v1alpha1.ResourceMeshNetworkPolicies, c.rest, c.params, namespace,
		func() *v1alpha1.MeshNetworkPolicy { return &v1alpha1.MeshNetworkPolicy{} },
		func() *v1alpha1.MeshNetworkPolicyList { return &v1alpha1.MeshNetworkPolicyList{} })
}

// MeshAgents returns a client for the MeshAgents.
func (c *Clientset) MeshAgents() MeshAgentInterface {
	return gentype.NewClientWithList(v1alpha1.ResourceMeshAgents, c.rest, c.params, "",
		func() *v1alpha1.MeshAgent { return &v1alpha1.MeshAgent{} },
		func() *v1alpha1.MeshAgentList { return &v1alpha1.MeshAgentList{} })
}
