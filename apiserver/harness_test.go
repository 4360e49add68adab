package apiserver_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/rest"

	"github.com/isthmus-mesh/isthmus/apiserver"
	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd"
	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// meshServer runs a real apiserver (embedded etcd, TLS, auth) against a
// real kube-apiserver, as the binary does, and reads its etcd back.
type meshServer struct {
	t      testing.TB
	cfg    apiserver.Config
	dir    string
	ca     *certs.CA
	logger *slog.Logger

	srv    *apiserver.Server
	stop   context.CancelFunc
	done   chan error
	reader *clientv3.Client
}

type serverOptions struct {
	cluster   string
	clusterID uint32
	// configure adjusts the Config before each start.
	configure func(*apiserver.Config)
}

func newMeshServer(t testing.TB, kube *rest.Config, opts serverOptions) *meshServer {
	t.Helper()
	if opts.cluster == "" {
		opts.cluster, opts.clusterID = "cluster3", 3
	}
	dir, err := os.MkdirTemp("", "isthmus-apiserver")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ca, err := certs.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer(certs.ServerOptions{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.IssueClient(protocol.AdminUser(opts.cluster), 0)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"server.crt": srv.CertPEM, "server.key": srv.KeyPEM, "ca.crt": ca.CertPEM(),
		"admin.crt": admin.CertPEM, "admin.key": admin.KeyPEM,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := apiserver.Config{
		ClusterName:          opts.cluster,
		ClusterID:            opts.clusterID,
		MaxConnectedClusters: 255,
		Kube:                 kube,
		DataDir:              filepath.Join(dir, "etcd"),
		ListenAddress:        "127.0.0.1:0",
		ServerCertFile:       filepath.Join(dir, "server.crt"),
		ServerKeyFile:        filepath.Join(dir, "server.key"),
		ClientCAFile:         filepath.Join(dir, "ca.crt"),
		AdminCertFile:        filepath.Join(dir, "admin.crt"),
		AdminKeyFile:         filepath.Join(dir, "admin.key"),
		HealthAddress:        "127.0.0.1:0",
		HeartbeatInterval:    time.Second,
		IdentityGrace:        time.Second,
		IdentityGCInterval:   100 * time.Millisecond,
	}
	if opts.configure != nil {
		opts.configure(&cfg)
	}
	m := &meshServer{t: t, cfg: cfg, dir: dir, ca: ca, logger: testLogger(t)}
	t.Cleanup(func() { m.shutdown() })
	return m
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("ISTHMUS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// start runs the server and waits until it is ready.
func (m *meshServer) start() {
	m.t.Helper()
	if err := m.startErr(); err != nil {
		m.t.Fatal(err)
	}
	m.waitReady()
}

// startErr runs the server and returns its start error, if it fails
// before etcd serves.
func (m *meshServer) startErr() error {
	srv, err := apiserver.New(m.logger, m.cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.srv, m.stop, m.done = srv, cancel, make(chan error, 1)
	go func() { m.done <- srv.Run(ctx) }()
	select {
	case <-srv.Started():
	case err := <-m.done:
		cancel()
		m.srv = nil
		if err == nil {
			err = errors.New("server returned before starting")
		}
		return err
	case <-time.After(2 * time.Minute):
		return errors.New("server did not start")
	}
	src, err := certs.NewFileSource(certs.FileSourceConfig{CertFile: m.cfg.AdminCertFile, KeyFile: m.cfg.AdminKeyFile, CAFile: m.cfg.ClientCAFile})
	if err != nil {
		return err
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	m.reader, err = meshetcd.NewClient(cctx, meshetcd.ClientConfig{Endpoints: []string{srv.EtcdEndpoint()}, TLS: src.ClientConfig("127.0.0.1")})
	return err
}

func (m *meshServer) waitReady() {
	m.t.Helper()
	eventually(m.t, 2*time.Minute, "apiserver ready", func() error {
		select {
		case err := <-m.done:
			m.t.Fatalf("server stopped: %v", err)
		default:
		}
		resp, err := http.Get("http://" + m.srv.HealthAddress() + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})
}

// shutdown stops the server and waits for it; it reports a failed Run.
func (m *meshServer) shutdown() {
	if m.srv == nil {
		return
	}
	if m.reader != nil {
		m.reader.Close()
		m.reader = nil
	}
	m.stop()
	if err := <-m.done; err != nil {
		m.t.Errorf("server: %v", err)
	}
	m.srv = nil
}

// list returns every key and value under the prefixes.
func (m *meshServer) list(ctx context.Context, prefixes ...string) (map[string]string, error) {
	out := map[string]string{}
	for _, p := range prefixes {
		resp, err := m.reader.Get(ctx, p, clientv3.WithPrefix())
		if err != nil {
			return nil, err
		}
		for _, kv := range resp.Kvs {
			out[string(kv.Key)] = string(kv.Value)
		}
	}
	return out, nil
}

// eventually retries cond every 50ms until it returns nil or timeout
// passes, then fails t with cond's last error.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
	}
}

func tlsConfig(c tls.Certificate, ca *certs.CA) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
}

// writePair writes kp's certificate and key into dir.
func writePair(t testing.TB, dir string, kp *certs.KeyPair) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(certFile, kp.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, kp.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
