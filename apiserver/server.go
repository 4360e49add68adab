package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/isthmus-mesh/isthmus/apiserver/exporter"
	"github.com/isthmus-mesh/isthmus/apiserver/identity"
	"github.com/isthmus-mesh/isthmus/apiserver/kvstore"
	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd"
	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Server is one cluster's mesh apiserver. Run it once; its other methods
// are safe for concurrent use with Run.
type Server struct {
	logger  *slog.Logger
	cfg     Config
	metrics *metrics

	ready   atomic.Bool
	started chan struct{} // closed once etcd is reachable and its endpoint known

	// Set before started is closed.
	cli          *clientv3.Client
	etcdEndpoint string
	healthAddr   string
}

// New checks cfg and returns a server ready to Run.
func New(logger *slog.Logger, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = time.Minute
	}
	if cfg.MaxTxnOps == 0 {
		cfg.MaxTxnOps = 128
	}
	return &Server{
		logger:  logger.With(logfields.Cluster, cfg.ClusterName),
		cfg:     cfg,
		metrics: newMetrics(),
		started: make(chan struct{}),
	}, nil
}

// Started is closed once etcd serves and EtcdEndpoint is known.
func (s *Server) Started() <-chan struct{} { return s.started }

// EtcdEndpoint is the URL of the mesh etcd as the apiserver dials it.
// Valid once Started is closed.
func (s *Server) EtcdEndpoint() string { return s.etcdEndpoint }

// HealthAddress is the bound address of the health server. Valid once
// Started is closed.
func (s *Server) HealthAddress() string { return s.healthAddr }

// Ready reports nil once the initial export is complete and the synced
// canaries are written, while etcd answers.
func (s *Server) Ready(ctx context.Context) error {
	if !s.ready.Load() {
		return errors.New("initial export not complete")
	}
	if _, err := s.cli.Get(ctx, protocol.ClusterConfigKey(s.cfg.ClusterName), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd unreachable: %w", err)
	}
	return nil
}

// prefixes the apiserver owns in etcd, by metric label: loaded at start
// and swept after the initial export.
func (s *Server) prefixes() map[string]string {
	c := s.cfg.ClusterName
	return map[string]string{
		protocol.WatchPrefix(c, protocol.KindNodes):      string(protocol.KindNodes),
		protocol.WatchPrefix(c, protocol.KindServices):   string(protocol.KindServices),
		protocol.WatchPrefix(c, protocol.KindIdentities): string(protocol.KindIdentities),
		protocol.WatchPrefix(c, protocol.KindIPCache):    string(protocol.KindIPCache),
		identity.PrivatePrefix:                           "identities-private",
	}
}

// Run serves until ctx ends or something fatal happens.
func (s *Server) Run(ctx context.Context) error {
	runStart := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kube, err := kubernetes.NewForConfig(s.cfg.Kube)
	if err != nil {
		return fmt.Errorf("Kubernetes client: %w", err)
	}
	if err := publishConfigMap(ctx, kube, &s.cfg); err != nil {
		return err
	}
	if s.cfg.HealthAddress != "" {
		h, err := startHealthServer(s.logger, s.cfg.HealthAddress, s, s.metrics)
		if err != nil {
			return err
		}
		defer h.close()
		s.healthAddr = h.Addr()
	}

	remotes, err := currentRemoteReaders(ctx, kube, s.cfg.RemoteClusters)
	if err != nil {
		return err
	}
	cli, etcdDone, err := s.connectEtcd(ctx, remotes)
	if err != nil {
		return err
	}
	defer etcdDone.close()
	defer cli.Close()
	s.cli = cli
	close(s.started)

	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	prefixes := s.prefixes()
	w := kvstore.NewWriter(s.logger.With(logfields.Component, "writer"), cli, kvstore.WriterConfig{
		MaxOpsPerTxn: s.cfg.MaxTxnOps,
		Prefixes:     prefixes,
		Metrics:      s.metrics.writer(),
	})
	for p := range prefixes {
		n, err := w.Load(ctx, p)
		if err != nil {
			return fmt.Errorf("read what etcd holds: %w", err)
		}
		s.logger.Debug("loaded keys", logfields.Prefix, p, logfields.Count, n)
	}
	wg.Go(func() { w.Run(ctx) })

	// Canaries a previous run left would claim an export not done yet.
	for _, k := range protocol.Kinds {
		if _, err := cli.Delete(ctx, protocol.SyncedKey(s.cfg.ClusterName, k)); err != nil {
			return fmt.Errorf("clear synced canaries: %w", err)
		}
	}
	w.Put(protocol.ClusterConfigKey(s.cfg.ClusterName), protocol.NewClusterConfig(s.cfg.ClusterID, s.cfg.MaxConnectedClusters).Encode(), time.Time{})

	session := kvstore.NewSession(s.logger.With(logfields.Component, "session"), cli, 3*s.cfg.HeartbeatInterval)
	wg.Go(func() { session.Run(ctx) })
	wg.Go(func() { s.heartbeat(ctx, session) })

	alloc, err := identity.New(s.logger.With(logfields.Component, "identity"), identity.Config{
		ClusterID:            s.cfg.ClusterID,
		MaxConnectedClusters: s.cfg.MaxConnectedClusters,
		Grace:                s.cfg.IdentityGrace,
		Store:                w,
	})
	if err != nil {
		return err
	}
	restored, err := alloc.Restore(ctx, cli)
	if err != nil {
		return fmt.Errorf("restore identities: %w", err)
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	exp, err := exporter.New(s.logger.With(logfields.Component, "exporter"), exporter.Config{
		Cluster:              s.cfg.ClusterName,
		ClusterID:            s.cfg.ClusterID,
		MaxConnectedClusters: s.cfg.MaxConnectedClusters,
		Client:               kube,
		Writer:               w,
		Allocator:            alloc,
		Recorder:             broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: fieldManager}),
		IdentityGCInterval:   s.cfg.IdentityGCInterval,
		Metrics:              s.metrics.exporter(),
	})
	if err != nil {
		return err
	}
	if !s.cfg.external() || s.cfg.EtcdManageAuth {
		rr := &remoteReaders{
			logger:   s.logger.With(logfields.Component, "remote-readers"),
			kube:     kube,
			cli:      cli,
			cluster:  s.cfg.ClusterName,
			static:   s.cfg.RemoteClusters,
			recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: fieldManager}),
		}
		wg.Go(func() { rr.run(ctx) })
	}
	exportStart := time.Now()
	expDone := make(chan error, 1)
	wg.Go(func() { expDone <- exp.Run(ctx) })

	if err := s.completeInitialExport(ctx, exp, w, session, prefixes); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	took := time.Since(exportStart)
	s.metrics.initialExport.Set(took.Seconds())
	s.metrics.ready.Set(1)
	s.ready.Store(true)
	s.logger.Info("initial export complete; ready",
		logfields.Duration, took, "sinceStart", time.Since(runStart), "identitiesRestored", restored, "identities", alloc.Len())

	select {
	case <-ctx.Done():
		return nil
	case err := <-etcdDone.err():
		return fmt.Errorf("embedded etcd: %w", err)
	case err := <-expDone:
		if err != nil {
			return fmt.Errorf("exporter: %w", err)
		}
		return nil
	}
}

// completeInitialExport waits for the first export, commits it, sweeps
// what a previous run left and then writes the synced canaries.
func (s *Server) completeInitialExport(ctx context.Context, exp *exporter.Exporter, w *kvstore.Writer, session *kvstore.Session, prefixes map[string]string) error {
	if err := exp.WaitInitialExport(ctx); err != nil {
		return err
	}
	if err := w.Flush(ctx); err != nil {
		return err
	}
	for p := range prefixes {
		if n := w.Sweep(p); n > 0 {
			s.logger.Info("deleting keys of objects gone while stopped", logfields.Prefix, p, logfields.Count, n)
		}
	}
	if err := w.Flush(ctx); err != nil {
		return err
	}
	now := protocol.EncodeTimestamp(time.Now())
	for _, k := range protocol.Kinds {
		if err := session.Put(ctx, protocol.SyncedKey(s.cfg.ClusterName, k), now); err != nil {
			return fmt.Errorf("write synced canary: %w", err)
		}
	}
	return nil
}

func (s *Server) heartbeat(ctx context.Context, session *kvstore.Session) {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		now := time.Now()
		if err := session.Put(ctx, protocol.HeartbeatKey, protocol.EncodeTimestamp(now)); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.metrics.writeErrors.Inc()
			s.logger.Warn("write heartbeat", logfields.Error, err)
		} else {
			s.metrics.heartbeat.Set(float64(now.Unix()))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// etcdHandle stops an embedded etcd (or nothing for an external one) and
// carries its fatal errors.
type etcdHandle struct{ embedded *meshetcd.Embedded }

func (h etcdHandle) close() {
	if h.embedded != nil {
		h.embedded.Close()
	}
}

func (h etcdHandle) err() <-chan error {
	if h.embedded != nil {
		return h.embedded.Err()
	}
	return nil
}

// connectEtcd starts the embedded etcd, or reaches the external one, and
// sets up its users and roles.
func (s *Server) connectEtcd(ctx context.Context, remotes []string) (*clientv3.Client, etcdHandle, error) {
	var (
		h          etcdHandle
		endpoints  []string
		src        *certs.FileSource
		serverName string
		err        error
	)
	if s.cfg.external() {
		endpoints = s.cfg.EtcdEndpoints
		src, err = certs.NewFileSource(certs.FileSourceConfig{CertFile: s.cfg.EtcdCertFile, KeyFile: s.cfg.EtcdKeyFile, CAFile: s.cfg.EtcdCAFile})
		if err != nil {
			return nil, h, fmt.Errorf("etcd client certificate: %w", err)
		}
	} else {
		host, _, _ := net.SplitHostPort(s.cfg.ListenAddress)
		if err := checkServerSAN(s.cfg.ServerCertFile, meshetcd.DialHost(host)); err != nil {
			return nil, h, err
		}
		src, err = certs.NewFileSource(certs.FileSourceConfig{CertFile: s.cfg.AdminCertFile, KeyFile: s.cfg.AdminKeyFile, CAFile: s.cfg.ClientCAFile})
		if err != nil {
			return nil, h, fmt.Errorf("admin client certificate: %w", err)
		}
		h.embedded, err = meshetcd.StartEmbedded(s.logger, meshetcd.EmbeddedConfig{
			DataDir:       s.cfg.DataDir,
			ListenAddress: s.cfg.ListenAddress,
			CertFile:      s.cfg.ServerCertFile,
			KeyFile:       s.cfg.ServerKeyFile,
			ClientCAFile:  s.cfg.ClientCAFile,
			MaxTxnOps:     uint(s.cfg.MaxTxnOps),
		})
		if err != nil {
			return nil, h, err
		}
		endpoints = []string{h.embedded.ClientURL()}
		u, _ := url.Parse(endpoints[0])
		serverName = u.Hostname()
	}
	s.etcdEndpoint = endpoints[0]
	cli, err := meshetcd.NewClient(ctx, meshetcd.ClientConfig{
		Endpoints: endpoints,
		TLS:       src.ClientConfig(serverName),
		Logger:    s.logger,
	})
	if err != nil {
		h.close()
		return nil, h, err
	}
	if !s.cfg.external() || s.cfg.EtcdManageAuth {
		a := meshetcd.Access{Cluster: s.cfg.ClusterName, RemoteClusters: remotes}
		if err := a.Apply(ctx, cli); err != nil {
			cli.Close()
			h.close()
			if errors.Is(err, meshetcd.ErrNotRoot) && s.cfg.external() {
				return nil, h, fmt.Errorf("set up etcd users and roles: %w (or start with --etcd-manage-auth=false if they are managed elsewhere)", err)
			}
			return nil, h, fmt.Errorf("set up etcd users and roles: %w", err)
		}
	}
	return cli, h, nil
}

// checkServerSAN fails early, with the fix, when the server certificate
// does not cover the address the apiserver dials itself at.
func checkServerSAN(certFile, host string) error {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("--tls-cert-file: %w", err)
	}
	c, err := certs.ParseCertificate(b)
	if err != nil {
		return fmt.Errorf("--tls-cert-file %s: %w", certFile, err)
	}
	if err := c.VerifyHostname(host); err != nil {
		return fmt.Errorf("--tls-cert-file %s is not valid for %s, which the apiserver dials its embedded etcd at; issue it with %s among its names or IP addresses", certFile, host, host)
	}
	return nil
}
