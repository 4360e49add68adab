// Package kubelet is the lab's kubelet: one runs inside each lab node's
// network namespace and cgroup. It registers the Node (pod CIDR, InternalIP,
// Ready condition) and keeps its lease fresh, and for every pod bound to the
// node it builds the pod's network (podnet), runs the pod's workload process
// (the echo server, one process serving every declared container port) in
// the pod's namespace and the node's cgroup, and reports the pod's status.
// Deleting a pod stops its workload within the pod's grace period, removes
// its network and then removes the pod object, as a real kubelet does, so
// Deployments scale cleanly. Scheduling, ReplicaSets and EndpointSlices are
// left to the real control plane.
//
// Images, commands, volumes, probes and container logs are not simulated:
// every container is the echo server, and a pod is Ready once its ports are
// bound.
//
// It must not import the supervisor or the CLI.
package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/lab/podnet"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// WorkloadSpec is what a pod's workload process serves.
type WorkloadSpec struct {
	Identity echo.Identity
	Ports    []echo.Port
}

// Config configures a Kubelet.
type Config struct {
	// Client talks to the cluster's kube-apiserver. Required.
	Client kubernetes.Interface
	// NodeName and ClusterName name the node and its cluster. Required.
	NodeName, ClusterName string
	// NodeIP is the node's InternalIP and the IP of host-network pods.
	// Required.
	NodeIP netip.Addr
	// PodCIDR is the node's slice of the cluster's pod CIDR. Required.
	PodCIDR netip.Prefix
	// PodNetnsPrefix starts the name of each pod's network namespace; the
	// pod's UID completes it. It must be unique to this node: at start the
	// kubelet removes namespaces with this prefix that earlier runs left.
	// Required.
	PodNetnsPrefix string
	// Network builds pod networks on the node side. Required.
	Network podnet.Network
	// Cgroup is the open cgroup directory workloads start in; nil means the
	// kubelet's own cgroup.
	Cgroup *os.File
	// Workload returns the command that runs a pod's workload. The command
	// must write one byte to file descriptor 3 once it serves, and stop on
	// SIGTERM. Required.
	Workload func(WorkloadSpec) *exec.Cmd
	// LeaseDuration is the node lease's duration; the lease is renewed
	// every quarter of it. Zero means 40 s.
	LeaseDuration time.Duration
	// StatusInterval is how often the Node's Ready condition is refreshed.
	// Zero means one minute.
	StatusInterval time.Duration
	// ReadyTimeout bounds how long a workload may take to serve. Zero
	// means 30 s.
	ReadyTimeout time.Duration
	// Workers is the number of pods synced at once. Zero means 4.
	Workers int
	// Ready, if set, is called once the Node is registered Ready and the
	// pod cache is synced.
	Ready func()
}

// Kubelet runs one lab node. It is safe for concurrent use; Run may be
// called once.
type Kubelet struct {
	log   *slog.Logger
	cfg   Config
	pool  *podnet.Pool
	queue workqueue.TypedRateLimitingInterface[string]
	pods  corelisters.PodLister

	mu       sync.Mutex // guards runtimes
	runtimes map[string]*podRuntime
}

// New checks cfg and returns a Kubelet ready to Run.
func New(logger *slog.Logger, cfg Config) (*Kubelet, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("kubelet: no Kubernetes client")
	case cfg.NodeName == "" || cfg.ClusterName == "":
		return nil, errors.New("kubelet: node and cluster names are required")
	case !cfg.NodeIP.IsValid():
		return nil, errors.New("kubelet: no node IP")
	case cfg.PodNetnsPrefix == "":
		return nil, errors.New("kubelet: no pod namespace prefix")
	case cfg.Network.Node == nil:
		return nil, errors.New("kubelet: no node network handle")
	case cfg.Workload == nil:
		return nil, errors.New("kubelet: no workload command")
	}
	pool, err := podnet.NewPool(cfg.PodCIDR)
	if err != nil {
		return nil, fmt.Errorf("kubelet: %w", err)
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = 40 * time.Second
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = time.Minute
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	if cfg.Workers == 0 {
		cfg.Workers = 4
	}
	return &Kubelet{
		log:  logger.With(logfields.Node, cfg.NodeName, logfields.Cluster, cfg.ClusterName),
		cfg:  cfg,
		pool: pool,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 10*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods"}),
		runtimes: map[string]*podRuntime{},
	}, nil
}

// Run registers the node and runs its pods until ctx ends; then it stops
// every workload and removes every pod network before returning.
func (k *Kubelet) Run(ctx context.Context) error {
	if err := k.removeStaleSandboxes(); err != nil {
		return err
	}
	if err := k.register(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer k.stopAll()
	defer k.queue.ShutDown()
	wg.Go(func() { k.renewLease(ctx) })
	wg.Go(func() { k.refreshStatus(ctx) })

	factory := informers.NewSharedInformerFactoryWithOptions(k.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.cfg.NodeName).String()
		}))
	podInformer := factory.Core().V1().Pods()
	k.pods = podInformer.Lister()
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    k.enqueue,
		UpdateFunc: func(_, obj any) { k.enqueue(obj) },
		DeleteFunc: k.enqueue,
	}); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced) {
		return fmt.Errorf("sync pods: %w", ctx.Err())
	}
	k.log.Info("node ready")
	if k.cfg.Ready != nil {
		k.cfg.Ready()
	}
	for range k.cfg.Workers {
		wg.Go(func() {
			for k.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	return nil
}

func (k *Kubelet) enqueue(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		k.log.Warn("cannot key pod", logfields.Error, err)
		return
	}
	k.queue.Add(key)
}

func (k *Kubelet) processNext(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if err := k.syncPod(ctx, key); err != nil {
		if ctx.Err() != nil {
			return true
		}
		k.log.Warn("sync pod", logfields.Pod, key, logfields.Error, err)
		k.queue.AddRateLimited(key)
		return true
	}
	k.queue.Forget(key)
	return true
}
