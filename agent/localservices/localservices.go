// Package localservices feeds the local cluster's global Services into the
// agent's merged state: their frontends (ClusterIPs and ports) and affinity
// from the Service's mesh annotations, and, for a global Service that is
// not shared (and so not exported), its ready local endpoints from its
// EndpointSlices. A bad annotation is reported in the log and as a Warning
// Event on the Service.
//
// It must not import datapath/ or apiserver/.
package localservices

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"

	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Config configures a Watcher.
type Config struct {
	// Client reads Services and EndpointSlices. Required.
	Client kubernetes.Interface
	// State receives the global Services. Required.
	State *state.State
	// Events reports bad annotations on the Service. Nil means log only.
	Events events.EventRecorder
	// Resync is the informers' resync period. Zero means none.
	Resync time.Duration
	// Namespace limits the watch to one namespace. Empty means all, which
	// is what the agent does; tests sharing one apiserver scope it.
	Namespace string
}

// Watcher watches the local cluster's Services and EndpointSlices. Run does
// the work; HasSynced is safe for concurrent use.
type Watcher struct {
	logger *slog.Logger
	cfg    Config

	services cache.SharedIndexInformer
	slices   cache.SharedIndexInformer
	synced   []cache.InformerSynced

	mu sync.Mutex // guards reported
	// reported remembers the annotation errors last reported per Service,
	// so that a resync does not repeat them.
	reported map[state.ServiceName]string
}

const byService = "service"

// New returns a Watcher; Run starts it.
func New(logger *slog.Logger, cfg Config) (*Watcher, error) {
	if cfg.Client == nil || cfg.State == nil {
		return nil, errors.New("localservices: Config.Client and State are required")
	}
	f := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync, informers.WithNamespace(cfg.Namespace))
	w := &Watcher{
		logger:   logger.With(logfields.Component, "localservices"),
		cfg:      cfg,
		services: f.Core().V1().Services().Informer(),
		slices:   f.Discovery().V1().EndpointSlices().Informer(),
		reported: make(map[state.ServiceName]string),
	}
	// Keep only what the agent reads of each slice: on a big cluster
	// every node's agent holds them all.
	if err := w.slices.SetTransform(trimSlice); err != nil {
		return nil, err
	}
	if err := w.services.SetTransform(trimService); err != nil {
		return nil, err
	}
	if err := w.slices.AddIndexers(cache.Indexers{byService: sliceService}); err != nil {
		return nil, err
	}
	h1, err := w.services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.serviceChanged(obj) },
		UpdateFunc: func(_, obj any) { w.serviceChanged(obj) },
		DeleteFunc: func(obj any) { w.serviceDeleted(obj) },
	})
	if err != nil {
		return nil, err
	}
	h2, err := w.slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.sliceChanged(obj) },
		UpdateFunc: func(_, obj any) { w.sliceChanged(obj) },
		DeleteFunc: func(obj any) { w.sliceChanged(obj) },
	})
	if err != nil {
		return nil, err
	}
	w.synced = []cache.InformerSynced{h1.HasSynced, h2.HasSynced}
	return w, nil
}

// Run runs the informers until ctx is done.
func (w *Watcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { w.services.RunWithContext(ctx) })
	wg.Go(func() { w.slices.RunWithContext(ctx) })
	wg.Wait()
}

// HasSynced reports whether both informers delivered their initial lists.
func (w *Watcher) HasSynced() bool {
	for _, s := range w.synced {
		if !s() {
			return false
		}
	}
	return true
}

func nameOf(obj any) (state.ServiceName, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, err := meta(obj)
	if err != nil {
		return state.ServiceName{}, false
	}
	return state.ServiceName{Namespace: m.GetNamespace(), Name: m.GetName()}, true
}

func meta(obj any) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, errors.New("not a Kubernetes object")
	}
	return m, nil
}

func (w *Watcher) serviceChanged(obj any) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return
	}
	nn := state.ServiceName{Namespace: svc.Namespace, Name: svc.Name}
	opts, problems := meshconfig.ParseServiceAnnotations(svc.Annotations)
	w.report(svc, nn, problems)
	if !opts.Global {
		w.cfg.State.DeleteLocalService(nn)
		w.cfg.State.SetLocalEndpoints(nn, nil)
		return
	}
	w.cfg.State.UpsertLocalService(nn, state.LocalService{
		Frontends: frontends(svc),
		Shared:    opts.Shared,
		Affinity:  opts.Affinity,
	})
	if opts.Shared {
		w.cfg.State.SetLocalEndpoints(nn, nil)
	} else {
		w.cfg.State.SetLocalEndpoints(nn, w.endpoints(svc))
	}
}

func (w *Watcher) serviceDeleted(obj any) {
	nn, ok := nameOf(obj)
	if !ok {
		return
	}
	w.cfg.State.DeleteLocalService(nn)
	w.cfg.State.SetLocalEndpoints(nn, nil)
	w.mu.Lock()
	delete(w.reported, nn)
	w.mu.Unlock()
}

// report logs and records annotation problems once per distinct set.
func (w *Watcher) report(svc *corev1.Service, nn state.ServiceName, problems []meshconfig.AnnotationProblem) {
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = p
	}
	msg := errors.Join(errs...)
	text := ""
	if msg != nil {
		text = msg.Error()
	}
	w.mu.Lock()
	same := w.reported[nn] == text
	w.reported[nn] = text
	w.mu.Unlock()
	if same || msg == nil {
		return
	}
	w.logger.Warn("Service has invalid mesh annotations; using defaults for them", logfields.Service, nn.String(), logfields.Error, msg)
	if w.cfg.Events != nil {
		w.cfg.Events.Eventf(svc, nil, corev1.EventTypeWarning, "InvalidMeshAnnotation", "ReadAnnotations", "%s", text)
	}
}

// frontends returns every ClusterIP x port of a Service.
func frontends(svc *corev1.Service) []state.Frontend {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []state.Frontend
	for _, ip := range ips {
		addr, err := netip.ParseAddr(ip)
		if err != nil { // "None" for headless Services
			continue
		}
		for _, p := range svc.Spec.Ports {
			out = append(out, state.Frontend{Addr: addr.Unmap(), Port: uint16(p.Port), Protocol: string(p.Protocol), PortName: p.Name})
		}
	}
	return out
}

func (w *Watcher) sliceChanged(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return
	}
	nn := state.ServiceName{Namespace: es.Namespace, Name: name}
	item, exists, err := w.services.GetStore().GetByKey(nn.String())
	if err != nil || !exists {
		return
	}
	svc := item.(*corev1.Service)
	opts, _ := meshconfig.ParseServiceAnnotations(svc.Annotations)
	if opts.Global && !opts.Shared {
		w.cfg.State.SetLocalEndpoints(nn, w.endpoints(svc))
	}
}

// endpoints returns the ready endpoints of svc from its slices, read as
// the mesh apiserver reads them for its export.
func (w *Watcher) endpoints(svc *corev1.Service) map[string]protocol.PortConfiguration {
	nn := state.ServiceName{Namespace: svc.Namespace, Name: svc.Name}
	objs, err := w.slices.GetIndexer().ByIndex(byService, nn.String())
	if err != nil {
		return map[string]protocol.PortConfiguration{}
	}
	slices := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, obj := range objs {
		slices = append(slices, obj.(*discoveryv1.EndpointSlice))
	}
	backends, _ := meshconfig.ServiceBackends(svc.Spec.Ports, slices)
	return backends
}

func sliceService(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + name}, nil
}

// meshAnnotations are the only annotations the agent reads.
var meshAnnotations = []string{
	meshconfig.ServiceGlobalAnnotation, meshconfig.ServiceSharedAnnotation, meshconfig.ServiceAffinityAnnotation,
	meshconfig.CiliumServiceGlobalAnnotation, meshconfig.CiliumServiceSharedAnnotation, meshconfig.CiliumServiceAffinityAnnotation,
}

// trimService drops the parts of a Service the agent never reads (managed
// fields, other annotations such as kubectl's last-applied copy).
func trimService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	svc.ManagedFields = nil
	var kept map[string]string
	for _, k := range meshAnnotations {
		if v, ok := svc.Annotations[k]; ok {
			if kept == nil {
				kept = make(map[string]string, 2)
			}
			kept[k] = v
		}
	}
	svc.Annotations = kept
	svc.Status = corev1.ServiceStatus{}
	return svc, nil
}

// trimSlice drops the parts of an EndpointSlice the agent never reads.
func trimSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	es.ManagedFields = nil
	es.Annotations = nil
	for i := range es.Endpoints {
		ep := &es.Endpoints[i]
		ep.TargetRef, ep.DeprecatedTopology, ep.Hints, ep.Zone, ep.Hostname = nil, nil, nil, nil, nil
	}
	return es, nil
}
