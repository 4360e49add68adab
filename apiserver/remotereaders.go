package apiserver

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// remoteReaders keeps the remote-<c> etcd users in step with the
// isthmus-remote-readers ConfigMap (one data key per cluster allowed to
// read), which `isthmus connect` and `disconnect` edit: a cluster removed
// there loses its etcd user at once, whatever its certificate says.
type remoteReaders struct {
	logger   *slog.Logger
	kube     kubernetes.Interface
	cli      *clientv3.Client
	cluster  string
	static   []string // from --remote-cluster
	recorder record.EventRecorder
}

func (r *remoteReaders) run(ctx context.Context) {
	factory := informers.NewSharedInformerFactoryWithOptions(r.kube, 0,
		informers.WithNamespace(meshconfig.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", meshconfig.RemoteReadersConfigMap).String()
		}))
	inf := factory.Core().V1().ConfigMaps().Informer()
	changed := make(chan struct{}, 1)
	kick := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    kick,
		UpdateFunc: func(_, o any) { kick(o) },
		DeleteFunc: kick,
	}); err != nil {
		r.logger.Error("watch remote readers", logfields.Error, err)
		return
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()

	var applied []string
	backoff := time.Second
	retry := time.NewTimer(0)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-retry.C:
		}
		if !inf.HasSynced() {
			continue
		}
		names := r.names(inf)
		if applied != nil && slices.Equal(names, applied) {
			continue
		}
		a := meshetcd.Access{Cluster: r.cluster, RemoteClusters: names}
		if err := a.Apply(ctx, r.cli); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.logger.Warn("update remote etcd users; retrying", logfields.Error, err, "retryIn", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = time.Second
		applied = names
		r.logger.Info("remote etcd users updated", "remoteClusters", names)
	}
}

// currentRemoteReaders reads the ConfigMap once, at start, so the first
// setup of the etcd users does not drop the users it lists.
func currentRemoteReaders(ctx context.Context, kube kubernetes.Interface, static []string) ([]string, error) {
	set := make(map[string]bool)
	for _, n := range static {
		set[n] = true
	}
	cm, err := kube.CoreV1().ConfigMaps(meshconfig.Namespace).Get(ctx, meshconfig.RemoteReadersConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return slices.Sorted(maps.Keys(set)), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ConfigMap %s/%s: %w", meshconfig.Namespace, meshconfig.RemoteReadersConfigMap, err)
	}
	for k := range cm.Data {
		if protocol.ValidateClusterName(k) == nil {
			set[k] = true
		}
	}
	return slices.Sorted(maps.Keys(set)), nil
}

// names returns the remote clusters of the ConfigMap and the flags, sorted.
// A key that is not a cluster name is reported on the ConfigMap and left
// out.
func (r *remoteReaders) names(inf cache.SharedIndexInformer) []string {
	set := make(map[string]bool)
	for _, n := range r.static {
		set[n] = true
	}
	obj, exists, _ := inf.GetStore().GetByKey(meshconfig.Namespace + "/" + meshconfig.RemoteReadersConfigMap)
	if exists {
		cm := obj.(*corev1.ConfigMap)
		for k := range cm.Data {
			if err := protocol.ValidateClusterName(k); err != nil {
				r.logger.Warn("ignoring remote reader", logfields.Cluster, k, logfields.Error, err)
				if r.recorder != nil {
					r.recorder.Eventf(cm, corev1.EventTypeWarning, "InvalidRemoteReader", "key %q: %v; it gets no etcd user", k, err)
				}
				continue
			}
			set[k] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}
