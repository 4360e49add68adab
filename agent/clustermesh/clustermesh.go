// Package clustermesh keeps one remotecluster reader per entry of the
// isthmus-clustermesh Secret (PROTOCOL.md "The connection config"), the
// agent's own cluster included, and applies changes of the Secret without a
// restart: an added entry connects, a removed entry disconnects and
// withdraws exactly that cluster's state, a changed entry (endpoints,
// rotated certificates) is used from the next connection, which starts at
// once.
//
// It must not import datapath/ or apiserver/.
package clustermesh

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-mesh/isthmus/agent/remotecluster"
	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// Config configures a ClusterMesh.
type Config struct {
	// Client reads the Secret. Required.
	Client kubernetes.Interface
	// Namespace and SecretName locate the Secret. Empty means
	// meshconfig.Namespace and meshconfig.ClusterMeshSecret.
	Namespace, SecretName string
	// State receives every cluster's state. Required.
	State *state.State
	// ClusterIDs is the agent's cluster ID registry. Required.
	ClusterIDs *remotecluster.ClusterIDs
	// Reader is the template of every reader's config: Entry, ClusterIDs
	// and Handler are filled in per cluster; MaxConnectedClusters is
	// required, the rest may stay zero for the defaults.
	Reader remotecluster.Config
}

// ClusterMesh runs the readers of the clusters the Secret lists. Run does
// the work; the other methods are safe for concurrent use.
type ClusterMesh struct {
	logger *slog.Logger
	cfg    Config
	// wake tells Run that the Secret changed.
	wake chan struct{}

	mu sync.Mutex // guards the fields below
	// latest is the Secret data last seen; nil before the first sync and
	// after a deletion.
	latest  map[string][]byte
	seen    bool // the informer has synced
	readers map[string]*reader
	// invalid maps a cluster (or Secret key) to why its entry is unusable.
	invalid map[string]string
	applied bool // the Secret as of the informer sync has been applied
}

type reader struct {
	rc     *remotecluster.RemoteCluster
	entry  meshconfig.ClusterEntry
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a ClusterMesh; Run starts it.
func New(logger *slog.Logger, cfg Config) (*ClusterMesh, error) {
	if cfg.Client == nil || cfg.State == nil || cfg.ClusterIDs == nil {
		return nil, errors.New("clustermesh: Config.Client, State and ClusterIDs are required")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = meshconfig.Namespace
	}
	if cfg.SecretName == "" {
		cfg.SecretName = meshconfig.ClusterMeshSecret
	}
	return &ClusterMesh{
		logger:  logger.With(logfields.Component, "clustermesh"),
		cfg:     cfg,
		wake:    make(chan struct{}, 1),
		readers: make(map[string]*reader),
		invalid: make(map[string]string),
	}, nil
}

// Run watches the Secret and keeps the readers in line with it until ctx
// is done. Then it stops every reader and returns; the state they
// delivered stays, since the agent is stopping, not leaving the mesh.
func (m *ClusterMesh) Run(ctx context.Context) {
	informer := m.newInformer()
	handle, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { m.secretChanged(obj) },
		UpdateFunc: func(_, obj any) { m.secretChanged(obj) },
		DeleteFunc: func(any) { m.secretChanged(nil) },
	})
	if err != nil {
		// Only possible on a stopped informer, which this one is not.
		m.logger.Error("Cannot watch the clustermesh Secret", logfields.Error, err)
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { informer.RunWithContext(ctx) })
	defer wg.Wait()
	defer m.stopAll()

	if !cache.WaitForCacheSync(ctx.Done(), handle.HasSynced) {
		return
	}
	m.mu.Lock()
	m.seen = true
	m.mu.Unlock()
	m.logger.Info("Read the clustermesh Secret", "secret", m.cfg.Namespace+"/"+m.cfg.SecretName)
	m.apply(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
			m.apply(ctx)
		}
	}
}

func (m *ClusterMesh) newInformer() cache.SharedIndexInformer {
	c := m.cfg.Client.CoreV1().Secrets(m.cfg.Namespace)
	selector := fields.OneTermEqualSelector("metadata.name", m.cfg.SecretName).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = selector
			return c.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = selector
			return c.Watch(ctx, o)
		},
	}
	return cache.NewSharedIndexInformer(lw, &corev1.Secret{}, 0, cache.Indexers{})
}

func (m *ClusterMesh) secretChanged(obj any) {
	var data map[string][]byte
	if s, ok := obj.(*corev1.Secret); ok {
		data = s.Data
		if data == nil {
			data = map[string][]byte{}
		}
	}
	m.mu.Lock()
	m.latest = data
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// apply makes the running readers match the latest Secret data.
func (m *ClusterMesh) apply(ctx context.Context) {
	m.mu.Lock()
	data := m.latest
	m.mu.Unlock()

	entries, errs := meshconfig.ParseEntries(data)
	invalid := make(map[string]string)
	for _, err := range errs {
		m.logger.Error("Ignoring unusable clustermesh entry; fix it with `isthmus connect`", logfields.Error, err)
		invalid[entryName(err, data)] = err.Error()
	}

	m.mu.Lock()
	running := maps.Clone(m.readers)
	m.invalid = invalid
	m.mu.Unlock()

	for name, r := range running {
		e, ok := entries[name]
		switch {
		case ok && !e.Equal(r.entry):
			m.logger.Info("Clustermesh entry changed; reconnecting with it", logfields.Cluster, name)
			r.rc.UpdateEntry(e)
			r.entry = e
		case ok:
		case data != nil && data[name] != nil:
			// Still listed but now unusable: keep the working reader with
			// the entry it has, rather than cut a cluster off over an edit.
			m.logger.Warn("Keeping the previous connection of a cluster whose entry became unusable", logfields.Cluster, name)
		default:
			m.remove(name, r)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		if _, ok := running[name]; ok {
			continue
		}
		if err := m.add(ctx, entries[name]); err != nil {
			m.logger.Error("Cannot read cluster", logfields.Cluster, name, logfields.Error, err)
			m.mu.Lock()
			m.invalid[name] = err.Error()
			m.mu.Unlock()
		}
	}
	m.mu.Lock()
	m.applied = true
	m.mu.Unlock()
}

// entryName finds which Secret key a ParseEntries error is about: the
// errors name the cluster quoted.
func entryName(err error, data map[string][]byte) string {
	for k := range data {
		if k != "" && strings.Contains(err.Error(), strconv.Quote(k)) {
			return k
		}
	}
	return err.Error()
}

func (m *ClusterMesh) add(ctx context.Context, e meshconfig.ClusterEntry) error {
	cfg := m.cfg.Reader
	cfg.Entry = e
	cfg.ClusterIDs = m.cfg.ClusterIDs
	cfg.Handler = m.cfg.State.Cluster(e.Cluster)
	rc, err := remotecluster.New(m.logger, cfg)
	if err != nil {
		m.cfg.State.RemoveCluster(e.Cluster)
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	r := &reader{rc: rc, entry: e, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		rc.Run(rctx)
	}()
	m.mu.Lock()
	m.readers[e.Cluster] = r
	m.mu.Unlock()
	m.logger.Info("Connecting to cluster", logfields.Cluster, e.Cluster, logfields.Endpoint, e.Endpoints)
	return nil
}

// remove stops a cluster's reader and withdraws its state.
func (m *ClusterMesh) remove(name string, r *reader) {
	m.logger.Info("Cluster left the clustermesh Secret; disconnecting and withdrawing its state", logfields.Cluster, name)
	r.cancel()
	<-r.done
	m.mu.Lock()
	delete(m.readers, name)
	m.mu.Unlock()
	m.cfg.State.RemoveCluster(name)
	m.cfg.ClusterIDs.Release(name)
	m.cfg.Reader.Metrics.Forget(name)
}

// stopAll stops every reader without withdrawing state.
func (m *ClusterMesh) stopAll() {
	m.mu.Lock()
	rs := slices.Collect(maps.Values(m.readers))
	m.mu.Unlock()
	for _, r := range rs {
		r.cancel()
	}
	for _, r := range rs {
		<-r.done
	}
}

// Status describes the clustermesh as the agent sees it.
type Status struct {
	// SecretSeen is true once the Secret (or its absence) was read.
	SecretSeen bool
	// Clusters has one status per reader, by name.
	Clusters []remotecluster.Status
	// Invalid maps an unusable entry to why.
	Invalid map[string]string
}

// Status returns a snapshot.
func (m *ClusterMesh) Status() Status {
	m.mu.Lock()
	rs := maps.Clone(m.readers)
	st := Status{SecretSeen: m.seen && m.applied, Invalid: maps.Clone(m.invalid)}
	m.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(rs)) {
		st.Clusters = append(st.Clusters, rs[name].rc.Status())
	}
	return st
}

// Clusters returns the names of the clusters being read, once the Secret
// has been read and applied; ok is false before that.
func (m *ClusterMesh) Clusters() (names []string, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.seen || !m.applied {
		return nil, false
	}
	return slices.Sorted(maps.Keys(m.readers)), true
}

// WaitSecretRead blocks until the Secret has been read and applied, or ctx
// is done.
func (m *ClusterMesh) WaitSecretRead(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if _, ok := m.Clusters(); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
