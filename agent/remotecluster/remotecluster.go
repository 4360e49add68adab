package remotecluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// numKinds is len(protocol.Kinds); kinds are indexed by their position there.
const numKinds = 4

// Config configures a RemoteCluster.
type Config struct {
	// Entry says where the cluster's mesh etcd is and how to authenticate
	// to it. Required.
	Entry meshconfig.ClusterEntry
	// MaxConnectedClusters is this agent's mesh setting; a cluster
	// announcing another value is refused. Required.
	MaxConnectedClusters uint32
	// ClusterIDs is the agent-wide registry of cluster IDs in use.
	// Required.
	ClusterIDs *ClusterIDs
	// Handler receives the cluster's state. Required.
	Handler Handler
	// Metrics, shared by all clusters. Nil means no metrics.
	Metrics *Metrics

	// HeartbeatTimeout is how long the reader waits for a heartbeat before
	// it treats the connection as lost. Zero means two minutes, twice the
	// interval at which mesh apiservers write it.
	HeartbeatTimeout time.Duration
	// MinBackoff and MaxBackoff bound the jittered wait between
	// connection attempts. Zero means 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// DialTimeout bounds establishing a connection. Zero means 10s.
	DialTimeout time.Duration
	// RequestTimeout bounds one read (a list page, or the wait for the
	// next chunk of a streamed list). Zero means 30s.
	RequestTimeout time.Duration
	// ListPageSize is the number of keys read per list request from
	// servers that cannot stream ranges (etcd before 3.7), which bounds
	// the memory a list needs. Zero means 10000.
	ListPageSize int64
	// NewClient creates the etcd client. Nil means clientv3.New.
	NewClient func(clientv3.Config) (*clientv3.Client, error)
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HeartbeatTimeout, 2*time.Minute)
	def(&c.MinBackoff, time.Second)
	def(&c.MaxBackoff, time.Minute)
	def(&c.DialTimeout, 10*time.Second)
	def(&c.RequestTimeout, 30*time.Second)
	if c.ListPageSize == 0 {
		c.ListPageSize = 10000
	}
	if c.NewClient == nil {
		c.NewClient = clientv3.New
	}
}

// RemoteCluster reads one cluster's mesh state and hands it to its Handler.
// Run does the work; Status and UpdateEntry are safe for concurrent use.
// When Run returns, the Handler still holds the state delivered so far: a
// cluster that only lost its connection keeps its entries, and the caller
// withdraws the state of a cluster that leaves the mesh.
type RemoteCluster struct {
	logger  *slog.Logger
	cfg     Config
	name    string
	metrics *clusterMetrics
	// entryChanged wakes Run when UpdateEntry changed the entry.
	entryChanged chan struct{}

	mu     sync.Mutex // guards the fields below
	entry  meshconfig.ClusterEntry
	status Status // Kinds is left nil; see kinds
	kinds  [numKinds]KindStatus
}

// New returns a RemoteCluster for cfg.Entry. It does not connect until Run.
func New(logger *slog.Logger, cfg Config) (*RemoteCluster, error) {
	if err := protocol.ValidateClusterName(cfg.Entry.Cluster); err != nil {
		return nil, err
	}
	if err := protocol.ValidateMaxConnectedClusters(cfg.MaxConnectedClusters); err != nil {
		return nil, err
	}
	if cfg.ClusterIDs == nil || cfg.Handler == nil {
		return nil, errors.New("remotecluster: Config.ClusterIDs and Config.Handler are required")
	}
	cfg.setDefaults()
	rc := &RemoteCluster{
		logger:       logger.With(logfields.Cluster, cfg.Entry.Cluster),
		cfg:          cfg,
		name:         cfg.Entry.Cluster,
		metrics:      cfg.Metrics.forCluster(cfg.Entry.Cluster),
		entryChanged: make(chan struct{}, 1),
		entry:        cfg.Entry,
	}
	rc.status = Status{Cluster: rc.name, Endpoints: slices.Clone(cfg.Entry.Endpoints), State: StateConnecting}
	rc.metrics.setState(StateConnecting)
	return rc, nil
}

// Name returns the cluster's name.
func (rc *RemoteCluster) Name() string { return rc.name }

// UpdateEntry replaces the cluster's connection entry (endpoints,
// certificates). When it differs from the current one, the reader drops its
// connection and reconnects with the new entry at once, keeping its state
// until the new connection's sweep.
func (rc *RemoteCluster) UpdateEntry(e meshconfig.ClusterEntry) {
	rc.mu.Lock()
	same := rc.entry.Equal(e)
	if !same {
		rc.entry = e
		rc.status.Endpoints = slices.Clone(e.Endpoints)
	}
	rc.mu.Unlock()
	if !same {
		select {
		case rc.entryChanged <- struct{}{}:
		default:
		}
	}
}

// Status returns a snapshot of the reader's state.
func (rc *RemoteCluster) Status() Status {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	s := rc.status
	s.Endpoints = slices.Clone(s.Endpoints)
	s.Kinds = make(map[protocol.Kind]KindStatus, numKinds)
	for i, k := range protocol.Kinds {
		s.Kinds[k] = rc.kinds[i]
	}
	return s
}

var (
	errEntryChanged     = errors.New("clustermesh entry changed")
	errHeartbeatTimeout = errors.New("heartbeat timeout")
	errRefused          = errors.New("refused")
)

// Run connects to the cluster and keeps its state current until ctx is
// done, reconnecting with jittered backoff after every failure.
func (rc *RemoteCluster) Run(ctx context.Context) {
	defer rc.setState(StateStopped)
	bo := backoff{min: rc.cfg.MinBackoff, max: rc.cfg.MaxBackoff}
	for {
		err := rc.connect(ctx, &bo)
		if ctx.Err() != nil {
			return
		}
		wait := bo.next()
		if errors.Is(err, errEntryChanged) {
			wait = 0
		}
		if !errors.Is(err, errRefused) {
			rc.setState(StateDisconnected)
		}
		rc.logger.Warn("Connection to cluster ended; reconnecting", logfields.Error, err, logfields.Duration, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-rc.entryChanged:
			t.Stop()
		case <-t.C:
		}
	}
}

// connect runs one connection: dial, cluster-config check, then the
// session. It returns why the connection ended.
func (rc *RemoteCluster) connect(ctx context.Context, bo *backoff) error {
	rc.mu.Lock()
	entry := rc.entry
	rc.mu.Unlock()
	// A pending change notification is consumed by this connection, which
	// uses the newest entry.
	select {
	case <-rc.entryChanged:
	default:
	}
	rc.setState(StateConnecting)

	if err := checkEndpoints(entry); err != nil {
		rc.recordError(err)
		return err
	}
	tlsConfig, err := TLSConfig(entry)
	if err != nil {
		rc.recordError(err)
		return err
	}
	client, err := rc.cfg.NewClient(clientv3.Config{
		Endpoints:            entry.Endpoints,
		TLS:                  tlsConfig,
		DialTimeout:          rc.cfg.DialTimeout,
		DialKeepAliveTime:    rc.cfg.DialTimeout,
		DialKeepAliveTimeout: rc.cfg.DialTimeout,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		err = fmt.Errorf("create etcd client for %v: %w", entry.Endpoints, err)
		rc.recordError(err)
		return err
	}
	defer client.Close()

	// Abort whatever the connection is doing when the entry changes.
	sctx, cancel := context.WithCancel(ctx)
	changed := make(chan struct{})
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		select {
		case <-rc.entryChanged:
			close(changed)
			cancel()
		case <-sctx.Done():
		}
	}()

	s := &session{rc: rc, client: client, bo: bo}
	err = s.run(sctx)
	cancel()
	<-watcherDone
	select {
	case <-changed:
		return errEntryChanged
	default:
	}
	if err != nil && ctx.Err() == nil {
		rc.recordError(err)
	}
	return err
}

func (rc *RemoteCluster) setState(st State) {
	rc.mu.Lock()
	rc.status.State = st
	if st != StateReady && st != StateSyncing {
		for i := range rc.kinds {
			rc.kinds[i].Synced = false
		}
	}
	rc.mu.Unlock()
	rc.metrics.setState(st)
}

func (rc *RemoteCluster) recordError(err error) {
	rc.mu.Lock()
	rc.status.LastError = err.Error()
	rc.status.LastErrorTime = time.Now()
	rc.mu.Unlock()
}
