package client

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/listers"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

// InformerOptions tune an informer. The zero value watches everything with
// no resync and the namespace index.
type InformerOptions struct {
	// Namespace limits a MeshNetworkPolicy informer to one namespace; ""
	// means all. MeshAgents are cluster-scoped and ignore it.
	Namespace string
	// Resync, when non-zero, redelivers every object at this interval.
	Resync time.Duration
	// Tweak, if set, edits the list and watch options (label or field
	// selectors).
	Tweak func(*metav1.ListOptions)
}

// MeshNetworkPolicyInformer is a shared informer whose store holds
// *v1alpha1.MeshNetworkPolicy.
type MeshNetworkPolicyInformer = cache.TypedSharedIndexInformer[*v1alpha1.MeshNetworkPolicy]

// MeshAgentInformer is a shared informer whose store holds
// *v1alpha1.MeshAgent.
type MeshAgentInformer = cache.TypedSharedIndexInformer[*v1alpha1.MeshAgent]

// NewMeshNetworkPolicyInformer returns an informer over MeshNetworkPolicies.
// Run it with RunWithContext; read it through
// MeshNetworkPolicyLister.
func NewMeshNetworkPolicyInformer(c *Clientset, opts InformerOptions) MeshNetworkPolicyInformer {
	cl := c.MeshNetworkPolicies(opts.Namespace)
	return cache.NewTypedSharedIndexInformer[*v1alpha1.MeshNetworkPolicy](newInformer(
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return cl.List(ctx, o) },
		cl.Watch, &v1alpha1.MeshNetworkPolicy{}, opts))
}

// NewMeshAgentInformer returns an informer over MeshAgents.
func NewMeshAgentInformer(c *Clientset, opts InformerOptions) MeshAgentInformer {
	cl := c.MeshAgents()
	return cache.NewTypedSharedIndexInformer[*v1alpha1.MeshAgent](newInformer(
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return cl.List(ctx, o) },
		cl.Watch, &v1alpha1.MeshAgent{}, opts))
}

// MeshNetworkPolicyLister reads the store of a MeshNetworkPolicy informer.
func MeshNetworkPolicyLister(inf MeshNetworkPolicyInformer) listers.ResourceIndexer[*v1alpha1.MeshNetworkPolicy] {
	return listers.New[*v1alpha1.MeshNetworkPolicy](inf.GetIndexer(), v1alpha1.MeshNetworkPolicyResource.GroupResource())
}

// MeshAgentLister reads the store of a MeshAgent informer.
func MeshAgentLister(inf MeshAgentInformer) listers.ResourceIndexer[*v1alpha1.MeshAgent] {
	return listers.New[*v1alpha1.MeshAgent](inf.GetIndexer(), v1alpha1.MeshAgentResource.GroupResource())
}

func newInformer(
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
	example runtime.Object, opts InformerOptions,
) cache.SharedIndexInformer {
	tweak := func(o *metav1.ListOptions) {
		if opts.Tweak != nil {
			opts.Tweak(o)
		}
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			return watchFn(ctx, o)
		},
	}
	return cache.NewSharedIndexInformerWithOptions(lw, example, cache.SharedIndexInformerOptions{
		ResyncPeriod: opts.Resync,
		Indexers:     cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
	})
}
