package policystatus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/listers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1/validation"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// Config configures a Controller.
type Config struct {
	// Client reads MeshNetworkPolicies and writes their status. Required.
	Client *client.Clientset
	// Recorder records the Events on invalid policies. Required. Any
	// scheme will do: the Controller sets the object's kind itself.
	Recorder record.EventRecorder
	// Namespace limits the policies to one namespace. Empty means all
	// (what the mesh apiserver does); tests that share an apiserver scope
	// it.
	Namespace string
	// Registry receives the metrics. Nil means none.
	Registry prometheus.Registerer
}

// Event reasons.
const (
	// ReasonInvalid: a generation of the policy is invalid; the note
	// names every problem.
	ReasonInvalid = v1alpha1.ReasonInvalid
)

// Controller keeps every policy's Accepted condition current. Run does the
// work; HasSynced is safe for concurrent use.
type Controller struct {
	logger   *slog.Logger
	cfg      Config
	informer client.MeshNetworkPolicyInformer
	lister   listers.ResourceIndexer[*v1alpha1.MeshNetworkPolicy]
	queue    workqueue.TypedRateLimitingInterface[types.NamespacedName]
	metrics  *metrics
}

// New returns a Controller; it watches nothing until Run.
func New(logger *slog.Logger, cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Recorder == nil {
		return nil, errors.New("policystatus: Config.Client and Recorder are required")
	}
	c := &Controller{
		logger:   logger,
		cfg:      cfg,
		informer: client.NewMeshNetworkPolicyInformer(cfg.Client, client.InformerOptions{Namespace: cfg.Namespace}),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[types.NamespacedName](),
			workqueue.TypedRateLimitingQueueConfig[types.NamespacedName]{Name: "meshnetworkpolicy-status"}),
	}
	c.lister = client.MeshNetworkPolicyLister(c.informer)
	c.metrics = newMetrics(cfg.Registry, c.count)
	enqueue := func(p *v1alpha1.MeshNetworkPolicy) {
		c.queue.Add(types.NamespacedName{Namespace: p.Namespace, Name: p.Name})
	}
	// Every change is checked, status-only ones included, so that a status
	// someone else overwrote is put right; an unchanged one costs a
	// validation and no write.
	_, err := c.informer.AddTypedEventHandler(cache.TypedResourceEventHandlerFuncs[*v1alpha1.MeshNetworkPolicy]{
		AddFunc:    enqueue,
		UpdateFunc: func(_, p *v1alpha1.MeshNetworkPolicy) { enqueue(p) },
	})
	if err != nil {
		return nil, fmt.Errorf("watch MeshNetworkPolicies: %w", err)
	}
	return c, nil
}

// HasSynced reports whether the policies were listed.
func (c *Controller) HasSynced() bool { return c.informer.HasSynced() }

// Run writes statuses until ctx is done.
func (c *Controller) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer c.queue.ShutDown()
	wg.Go(func() { c.informer.RunWithContext(ctx) })
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return
	}
	c.logger.Info("MeshNetworkPolicies listed; writing their status")
	wg.Go(func() {
		for c.processNext(ctx) {
		}
	})
	<-ctx.Done()
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(key)
	err := c.sync(ctx, key)
	switch {
	case err == nil:
		c.queue.Forget(key)
	case apierrors.IsConflict(err):
		// A newer version is on its way through the informer; it is
		// checked then. Retry anyway in case the informer already had it.
		c.queue.AddRateLimited(key)
	default:
		c.metrics.errors.Inc()
		c.logger.Warn("Writing a MeshNetworkPolicy's status failed; retrying", logfields.Policy, key.String(), logfields.Error, err)
		c.queue.AddRateLimited(key)
	}
	return true
}

// sync writes the status of one policy when it is not current.
func (c *Controller) sync(ctx context.Context, key types.NamespacedName) error {
	c.metrics.syncs.Inc()
	p, err := listers.NewNamespaced(c.lister, key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	errs := validation.ValidateMeshNetworkPolicy(p)
	next := p.DeepCopy()
	if !validation.SetAccepted(next, errs) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if _, err := c.cfg.Client.MeshNetworkPolicies(p.Namespace).UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("update status: %w", err)
	}
	cond := meta.FindStatusCondition(next.Status.Conditions, v1alpha1.ConditionAccepted)
	if len(errs) == 0 {
		c.metrics.writes.WithLabelValues("accepted").Inc()
		c.logger.Info("MeshNetworkPolicy accepted", logfields.Policy, key.String(), logfields.Generation, p.Generation)
		return nil
	}
	c.metrics.writes.WithLabelValues("invalid").Inc()
	c.logger.Warn("MeshNetworkPolicy is invalid", logfields.Policy, key.String(), logfields.Generation, p.Generation, logfields.Error, validation.Detail(errs))
	// The Event goes with the status write, which happens once per
	// generation (and problem set), so Events do not repeat.
	next.SetGroupVersionKind(v1alpha1.SchemeGroupVersion.WithKind(v1alpha1.KindMeshNetworkPolicy))
	c.cfg.Recorder.Eventf(next, corev1.EventTypeWarning, ReasonInvalid, "Generation %d is invalid: %s", p.Generation, cond.Message)
	return nil
}

// writeTimeout bounds one status write.
const writeTimeout = 30 * time.Second

// fieldManager names the writer in managedFields.
const fieldManager = "isthmus-apiserver"

// count returns how many listed policies are accepted and invalid by their
// current status.
func (c *Controller) count() (accepted, invalid int) {
	all, err := c.lister.List(labels.Everything())
	if err != nil {
		return 0, 0
	}
	for _, p := range all {
		cond := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
		switch {
		case cond == nil || cond.ObservedGeneration != p.Generation:
		case cond.Status == metav1.ConditionTrue:
			accepted++
		default:
			invalid++
		}
	}
	return accepted, invalid
}
