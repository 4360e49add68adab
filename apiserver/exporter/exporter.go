package exporter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/isthmus-mesh/isthmus/apiserver/identity"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Writer receives the exported keys; kvstore.Writer is one.
type Writer interface {
	Put(key string, value []byte, since time.Time)
	Delete(key string, since time.Time)
}

// Config configures an Exporter.
type Config struct {
	Cluster              string
	ClusterID            uint32
	MaxConnectedClusters uint32
	// Client reads the cluster's objects. Required.
	Client kubernetes.Interface
	// Writer receives the keys. Required.
	Writer Writer
	// Allocator gives pods their identities. Required.
	Allocator *identity.Allocator
	// Recorder turns bad annotations into Events on their object. Nil
	// means they are only logged and counted.
	Recorder record.EventRecorder
	// IdentityGCInterval is how often unused identities are looked for.
	// Zero means a minute.
	IdentityGCInterval time.Duration
	// Metrics receive the exporter's counts. Nil fields are skipped.
	Metrics Metrics
}

// Metrics are the exporter's measurements.
type Metrics struct {
	// BadAnnotations counts annotation values that could not be used, by
	// annotation.
	BadAnnotations *prometheus.CounterVec
}

// Exporter watches the cluster and keeps its mesh state in the Writer. Run
// it once; WaitInitialExport is safe to call from other goroutines.
type Exporter struct {
	logger *slog.Logger
	cfg    Config

	factory    informers.SharedInformerFactory
	pods       cache.SharedIndexInformer
	nodes      listerscorev1.NodeLister
	namespaces listerscorev1.NamespaceLister
	services   listerscorev1.ServiceLister
	slices     cache.Indexer
	podIndex   cache.Indexer
	synced     []cache.InformerSynced

	queue   *dirtyQueue
	initial chan struct{} // closed when the first export pass is done

	// The worker's state: only the worker goroutine touches it.
	podState map[string]*podState
	ipOwners map[netip.Addr][]string // pod keys claiming an IP; the first is exported
	nodeIPs  map[string]string       // node -> its InternalIPs as last exported
	// problems holds the bad annotation values reported, by object
	// ("node/<name>", "service/<ns>/<name>") and annotation, so each is
	// reported once, not at every update.
	problems map[string]map[string]string
}

type podState struct {
	labels  string // security labels, protocol form
	id      protocol.NumericIdentity
	entries map[netip.Addr][]byte // encoded ipcache values
}

// Index names.
const (
	indexPodNode      = "node"
	indexSliceService = "service"
)

// New builds the informers; nothing runs until Run.
func New(logger *slog.Logger, cfg Config) (*Exporter, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("exporter: no Kubernetes client given")
	case cfg.Writer == nil:
		return nil, errors.New("exporter: no writer given")
	case cfg.Allocator == nil:
		return nil, errors.New("exporter: no identity allocator given")
	}
	if err := protocol.ValidateClusterName(cfg.Cluster); err != nil {
		return nil, err
	}
	if err := protocol.ValidateClusterID(cfg.ClusterID, cfg.MaxConnectedClusters); err != nil {
		return nil, err
	}
	if cfg.IdentityGCInterval <= 0 {
		cfg.IdentityGCInterval = time.Minute
	}
	e := &Exporter{
		logger:   logger,
		cfg:      cfg,
		factory:  informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithTransform(trim)),
		queue:    newDirtyQueue(),
		initial:  make(chan struct{}),
		podState: make(map[string]*podState),
		ipOwners: make(map[netip.Addr][]string),
		nodeIPs:  make(map[string]string),
		problems: make(map[string]map[string]string),
	}
	if err := e.setupInformers(); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *Exporter) setupInformers() error {
	core := e.factory.Core().V1()
	podInf := core.Pods().Informer()
	// The factory's informers come with the namespace index.
	if err := podInf.AddIndexers(cache.Indexers{
		indexPodNode: func(obj any) ([]string, error) {
			if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
				return []string{p.Spec.NodeName}, nil
			}
			return nil, nil
		},
	}); err != nil {
		return fmt.Errorf("pod indexers: %w", err)
	}
	sliceInf := e.factory.Discovery().V1().EndpointSlices().Informer()
	if err := sliceInf.AddIndexers(cache.Indexers{indexSliceService: func(obj any) ([]string, error) {
		if k, ok := sliceServiceKey(obj); ok {
			return []string{k}, nil
		}
		return nil, nil
	}}); err != nil {
		return fmt.Errorf("endpoint slice indexers: %w", err)
	}
	e.pods = podInf
	e.podIndex = podInf.GetIndexer()
	e.slices = sliceInf.GetIndexer()
	e.nodes = core.Nodes().Lister()
	e.namespaces = core.Namespaces().Lister()
	e.services = core.Services().Lister()

	type reg interface{ HasSynced() bool }
	add := func(inf cache.SharedIndexInformer, h cache.ResourceEventHandler) error {
		r, err := inf.AddEventHandler(h)
		if err != nil {
			return err
		}
		e.synced = append(e.synced, r.HasSynced)
		return nil
	}
	return errors.Join(
		add(podInf, cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { e.enqueueObj(kindPod, obj) },
			UpdateFunc: func(old, obj any) {
				if podChanged(old.(*corev1.Pod), obj.(*corev1.Pod)) {
					e.enqueueObj(kindPod, obj)
				}
			},
			DeleteFunc: func(obj any) { e.enqueueObj(kindPod, obj) },
		}),
		add(core.Nodes().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { e.enqueueObj(kindNode, obj) },
			UpdateFunc: func(old, obj any) {
				if nodeChanged(old.(*corev1.Node), obj.(*corev1.Node)) {
					e.enqueueObj(kindNode, obj)
				}
			},
			DeleteFunc: func(obj any) { e.enqueueObj(kindNode, obj) },
		}),
		add(core.Namespaces().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { e.enqueueObj(kindNamespace, obj) },
			UpdateFunc: func(old, obj any) {
				if !mapsEqual(old.(*corev1.Namespace).Labels, obj.(*corev1.Namespace).Labels) {
					e.enqueueObj(kindNamespace, obj)
				}
			},
		}),
		add(core.Services().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { e.enqueueObj(kindService, obj) },
			UpdateFunc: func(_, obj any) { e.enqueueObj(kindService, obj) },
			DeleteFunc: func(obj any) { e.enqueueObj(kindService, obj) },
		}),
		add(sliceInf, cache.ResourceEventHandlerFuncs{
			AddFunc: e.enqueueSliceService,
			UpdateFunc: func(old, obj any) {
				e.enqueueSliceService(old)
				e.enqueueSliceService(obj)
			},
			DeleteFunc: e.enqueueSliceService,
		}),
	)
}

func (e *Exporter) enqueueObj(k kind, obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		e.logger.Error("object without a key", logfields.Error, err)
		return
	}
	e.queue.add(k, key)
}

func (e *Exporter) enqueueSliceService(obj any) {
	if k, ok := sliceServiceKey(obj); ok {
		e.queue.add(kindService, k)
	}
}

// sliceServiceKey is namespace/name of the Service an EndpointSlice
// belongs to.
func sliceServiceKey(obj any) (string, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return "", false
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return "", false
	}
	return s.Namespace + "/" + name, true
}

// Run watches the cluster and exports until ctx ends.
func (e *Exporter) Run(ctx context.Context) error {
	e.factory.Start(ctx.Done())
	defer e.factory.Shutdown()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { e.collectIdentities(ctx) })

	// Convert nothing before every cache is full: a pod converted before
	// its namespace's labels are known would get a passing identity.
	if !cache.WaitForCacheSync(ctx.Done(), e.synced...) {
		return ctx.Err()
	}
	wg.Go(func() { e.work(ctx) })
	select {
	case <-e.queue.barrier():
		close(e.initial)
		e.logger.Info("initial export converted")
	case <-ctx.Done():
	}
	<-ctx.Done()
	return nil
}

// WaitInitialExport waits until every object that existed at start has
// been converted and handed to the Writer (which may not have committed
// it yet: see kvstore.Writer.Flush).
func (e *Exporter) WaitInitialExport(ctx context.Context) error {
	select {
	case <-e.initial:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *Exporter) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.queue.kick:
		}
		batch, n := e.queue.drain()
		e.process(batch)
		e.queue.processed(n)
	}
}

func (e *Exporter) collectIdentities(ctx context.Context) {
	t := time.NewTicker(e.cfg.IdentityGCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if n := e.cfg.Allocator.GC(now); n > 0 {
				e.logger.Info("released unused identities", logfields.Count, n)
			}
		}
	}
}

// process converts one batch: namespaces and nodes first, since they add
// the pods that depend on them.
func (e *Exporter) process(batch map[item]time.Time) {
	pods := make(map[string]time.Time)
	addPod := func(key string, since time.Time) {
		if t, ok := pods[key]; !ok || since.Before(t) {
			pods[key] = since
		}
	}
	for it, since := range batch {
		switch it.kind {
		case kindNamespace:
			objs, _ := e.podIndex.ByIndex(cache.NamespaceIndex, it.key)
			for _, o := range objs {
				p := o.(*corev1.Pod)
				addPod(p.Namespace+"/"+p.Name, since)
			}
		case kindNode:
			if e.exportNode(it.key, since) {
				objs, _ := e.podIndex.ByIndex(indexPodNode, it.key)
				for _, o := range objs {
					p := o.(*corev1.Pod)
					addPod(p.Namespace+"/"+p.Name, since)
				}
			}
		case kindPod:
			addPod(it.key, since)
		}
	}
	// In the order the changes were seen, so identities are allocated in
	// the order pods appeared (the same on every run of the same history).
	order := make([]string, 0, len(pods))
	for key := range pods {
		order = append(order, key)
	}
	slices.SortFunc(order, func(a, b string) int {
		if c := pods[a].Compare(pods[b]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	for _, key := range order {
		e.exportPod(key, pods[key])
	}
	for it, since := range batch {
		if it.kind == kindService {
			e.exportService(it.key, since)
		}
	}
}

// exportNode writes or deletes a node's entry. It reports whether the
// node's InternalIPs changed, which its pods' entries carry.
func (e *Exporter) exportNode(name string, since time.Time) (ipsChanged bool) {
	key := protocol.NodeKey(e.cfg.Cluster, name)
	node, err := e.nodes.Get(name)
	if apierrors.IsNotFound(err) {
		e.cfg.Writer.Delete(key, since)
		delete(e.problems, "node/"+name)
		_, had := e.nodeIPs[name]
		delete(e.nodeIPs, name)
		return had
	}
	if err != nil {
		e.logger.Error("get node", logfields.Node, name, logfields.Error, err)
		return false
	}
	n, bad := ConvertNode(e.cfg.Cluster, e.cfg.ClusterID, node)
	var problems []meshconfig.AnnotationProblem
	if bad != nil {
		problems = append(problems, *bad)
	}
	e.report(node, "node/"+name, problems)
	e.cfg.Writer.Put(key, n.Encode(), since)
	ips := internalIPs(node)
	old, had := e.nodeIPs[name]
	e.nodeIPs[name] = ips
	return !had || old != ips
}

func (e *Exporter) exportPod(key string, since time.Time) {
	old := e.podState[key]
	obj, exists, err := e.podIndex.GetByKey(key)
	if err != nil {
		e.logger.Error("get pod", logfields.Pod, key, logfields.Error, err)
		return
	}
	var p *corev1.Pod
	if exists {
		p = obj.(*corev1.Pod)
	}
	if p == nil || !podExported(p) {
		if old != nil {
			e.dropPod(key, old, since)
		}
		return
	}

	ns, err := e.namespaces.Get(p.Namespace)
	if err != nil {
		// Not in the cache yet: the namespace's arrival brings the pod
		// back (see process). Until then its export stays as it was.
		return
	}
	labels := PodSecurityLabels(e.cfg.Cluster, p, ns.Labels)
	st := &podState{labels: labels.String()}
	if old != nil && old.labels == st.labels {
		st.id = old.id
	} else {
		id, err := e.cfg.Allocator.Acquire(labels, since)
		if err != nil {
			e.logger.Error("allocate identity; pod not exported", logfields.Pod, key, logfields.Error, err)
			if old != nil {
				e.dropPod(key, old, since)
			}
			return
		}
		st.id = id
		if old != nil {
			e.cfg.Allocator.Release(old.id, since)
		}
	}
	node, _ := e.nodes.Get(p.Spec.NodeName)
	entries := PodIPCacheEntries(p, node, st.id)
	st.entries = make(map[netip.Addr][]byte, len(entries))
	for _, en := range entries {
		st.entries[en.IP] = en.Encode()
	}
	e.podState[key] = st
	if old != nil {
		for ip := range old.entries {
			if _, still := st.entries[ip]; !still {
				e.releaseIP(ip, key, since)
			}
		}
	}
	for ip, v := range st.entries {
		e.claimIP(ip, key, v, since)
	}
}

func (e *Exporter) dropPod(key string, st *podState, since time.Time) {
	delete(e.podState, key)
	for ip := range st.entries {
		e.releaseIP(ip, key, since)
	}
	e.cfg.Allocator.Release(st.id, since)
}

// claimIP records that pod key has ip and writes its entry unless another
// pod claimed the IP first.
func (e *Exporter) claimIP(ip netip.Addr, key string, value []byte, since time.Time) {
	owners := e.ipOwners[ip]
	found := false
	for _, o := range owners {
		if o == key {
			found = true
			break
		}
	}
	if !found {
		if len(owners) > 0 {
			e.logger.Warn("IP claimed by two running pods; keeping the first", logfields.IP, ip, logfields.Pod, key, "owner", owners[0])
		}
		owners = append(owners, key)
		e.ipOwners[ip] = owners
	}
	if owners[0] == key {
		e.cfg.Writer.Put(protocol.IPCacheKey(ip), value, since)
	}
}

// releaseIP drops pod key's claim on ip; the next claimant's entry, if
// any, takes its place.
func (e *Exporter) releaseIP(ip netip.Addr, key string, since time.Time) {
	owners := e.ipOwners[ip]
	for i, o := range owners {
		if o == key {
			owners = append(owners[:i:i], owners[i+1:]...)
			break
		}
	}
	if len(owners) == 0 {
		delete(e.ipOwners, ip)
		e.cfg.Writer.Delete(protocol.IPCacheKey(ip), since)
		return
	}
	e.ipOwners[ip] = owners
	if st := e.podState[owners[0]]; st != nil {
		e.cfg.Writer.Put(protocol.IPCacheKey(ip), st.entries[ip], since)
	}
}

func (e *Exporter) exportService(nsName string, since time.Time) {
	ns, name, _ := cache.SplitMetaNamespaceKey(nsName)
	key := protocol.ServiceKey(e.cfg.Cluster, ns, name)
	svc, err := e.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		e.cfg.Writer.Delete(key, since)
		delete(e.problems, "service/"+nsName)
		return
	}
	if err != nil {
		e.logger.Error("get service", logfields.Service, nsName, logfields.Error, err)
		return
	}
	opts, problems := meshconfig.ParseServiceAnnotations(svc.Annotations)
	e.report(svc, "service/"+nsName, problems)
	if !opts.Global || !opts.Shared {
		e.cfg.Writer.Delete(key, since)
		return
	}
	objs, _ := e.slices.ByIndex(indexSliceService, nsName)
	slices := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		slices = append(slices, o.(*discoveryv1.EndpointSlice))
	}
	cs := ConvertService(e.cfg.Cluster, e.cfg.ClusterID, svc, slices)
	e.cfg.Writer.Put(key, cs.Encode(), since)
}
