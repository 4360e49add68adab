// Package meshopstest runs what the mesh operations are tested against:
// the real mesh apiserver (package apiserver) of a cluster that
// `isthmus enable` prepared, in process, against that cluster's real
// kube-apiserver, with the certificates and identity enable wrote. It
// publishes its mesh endpoint in isthmus-config, exports the cluster's
// state and keeps the remote-<r> etcd users in step with the
// remote-readers ConfigMap, as it does in a cluster.
//
// Only tests import it. It must not import internal/meshops, whose tests
// use it.
package meshopstest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/isthmus-mesh/isthmus/apiserver"
	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// APIServerOptions tune StartAPIServer.
type APIServerOptions struct {
	// ExternalEtcd, when set, are the endpoints of an etcd the apiserver
	// uses instead of an embedded one, with the users and roles managed
	// elsewhere (--etcd-manage-auth=false): it creates no remote-<r>
	// user. The etcd must trust the cluster's mesh CA and know user
	// admin-<c>. Empty: an embedded etcd on a loopback port.
	ExternalEtcd []string
}

// APIServer is a running mesh apiserver.
type APIServer struct {
	Cluster string
	// Endpoint is the mesh endpoint it published in isthmus-config.
	Endpoint string
	// CA is the cluster's mesh CA.
	CA *certs.CA
}

// startTimeout bounds the start of one apiserver, until it is ready.
const startTimeout = 2 * time.Minute

// StartAPIServer runs the mesh apiserver of the cluster that kube reaches,
// with what `isthmus enable` wrote there, and waits until it is ready (its
// endpoint published, the initial export done); t's cleanup stops it.
// Under -short it skips t: this is the integration tier.
func StartAPIServer(t testing.TB, kube *rest.Config, opts APIServerOptions) *APIServer {
	t.Helper()
	servers, err := startAPIServers(t, opts, kube)
	if err != nil {
		t.Fatal(err)
	}
	return servers[0]
}

// StartAPIServers starts the mesh apiservers of several clusters
// concurrently, as StartAPIServer does.
func StartAPIServers(t testing.TB, opts APIServerOptions, kubes ...*rest.Config) []*APIServer {
	t.Helper()
	servers, err := startAPIServers(t, opts, kubes...)
	if err != nil {
		t.Fatal(err)
	}
	return servers
}

func startAPIServers(t testing.TB, opts APIServerOptions, kubes ...*rest.Config) ([]*APIServer, error) {
	if testing.Short() {
		t.Skip("integration tier (real mesh apiservers); not run under -short")
	}
	servers := make([]*APIServer, len(kubes))
	errs := make([]error, len(kubes))
	var wg sync.WaitGroup
	for i, kube := range kubes {
		wg.Go(func() { servers[i], errs[i] = startAPIServer(t, kube, opts) })
	}
	wg.Wait()
	return servers, errors.Join(errs...)
}

func startAPIServer(t testing.TB, kube *rest.Config, opts APIServerOptions) (*APIServer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	client, err := kubernetes.NewForConfig(kube)
	if err != nil {
		return nil, err
	}
	dir := t.TempDir()
	files, err := writeEnabledFiles(ctx, client, dir)
	if err != nil {
		return nil, err
	}
	cfg := apiserver.Config{
		ClusterName:          files.cluster,
		ClusterID:            files.id,
		MaxConnectedClusters: files.maxConnected,
		Kube:                 kube,
		HeartbeatInterval:    time.Second,
	}
	if len(opts.ExternalEtcd) > 0 {
		cfg.EtcdEndpoints = opts.ExternalEtcd
		cfg.EtcdCAFile, cfg.EtcdCertFile, cfg.EtcdKeyFile = files.ca, files.adminCert, files.adminKey
		cfg.AdvertiseEndpoints = opts.ExternalEtcd
		api := &APIServer{Cluster: files.cluster, Endpoint: opts.ExternalEtcd[0], CA: files.meshCA}
		return api, run(ctx, t, cfg)
	}
	cfg.DataDir = filepath.Join(dir, "etcd")
	cfg.ServerCertFile, cfg.ServerKeyFile, cfg.ClientCAFile = files.serverCert, files.serverKey, files.ca
	cfg.AdminCertFile, cfg.AdminKeyFile = files.adminCert, files.adminKey
	// The endpoint is published at start, so the port is chosen before:
	// a free one, taken again if someone else binds it meanwhile.
	for attempt := 0; ; attempt++ {
		addr, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		cfg.ListenAddress = addr
		cfg.AdvertiseEndpoints = []string{"https://" + addr}
		err = run(ctx, t, cfg)
		if errors.Is(err, syscall.EADDRINUSE) && attempt < 3 {
			continue
		}
		return &APIServer{Cluster: files.cluster, Endpoint: cfg.AdvertiseEndpoints[0], CA: files.meshCA}, err
	}
}

// run starts the apiserver and waits until it is ready; t's cleanup stops
// it. An error means it is not running.
func run(ctx context.Context, t testing.TB, cfg apiserver.Config) error {
	srv, err := apiserver.New(slog.New(slog.DiscardHandler), cfg)
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	select {
	case <-srv.Started():
	case err := <-done:
		stop()
		return fmt.Errorf("mesh apiserver of %q stopped before it started: %w", cfg.ClusterName, err)
	case <-ctx.Done():
		stop()
		<-done
		return fmt.Errorf("mesh apiserver of %q did not start: %w", cfg.ClusterName, ctx.Err())
	}
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("mesh apiserver of %q: %v", cfg.ClusterName, err)
		}
	})
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := srv.Ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-tick.C:
		case err := <-done:
			done <- err // for the cleanup
			return fmt.Errorf("mesh apiserver of %q stopped before it was ready: %w", cfg.ClusterName, err)
		case <-ctx.Done():
			return fmt.Errorf("mesh apiserver of %q not ready within %s: %w", cfg.ClusterName, startTimeout, err)
		}
	}
}

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// enabledFiles are the paths of what `isthmus enable` stored in a cluster,
// written out as the chart mounts them, and the cluster's identity.
type enabledFiles struct {
	cluster                   string
	id, maxConnected          uint32
	meshCA                    *certs.CA
	ca, serverCert, serverKey string
	adminCert, adminKey       string
}

func writeEnabledFiles(ctx context.Context, client kubernetes.Interface, dir string) (*enabledFiles, error) {
	cm, err := client.CoreV1().ConfigMaps(meshconfig.Namespace).Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("the cluster is not enabled: %w", err)
	}
	f := &enabledFiles{cluster: cm.Data[meshconfig.KeyClusterName]}
	for key, to := range map[string]*uint32{meshconfig.KeyClusterID: &f.id, meshconfig.KeyMaxConnectedClusters: &f.maxConnected} {
		n, err := strconv.ParseUint(cm.Data[key], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("isthmus-config %s: %w", key, err)
		}
		*to = uint32(n)
	}
	secrets := map[string]map[string][]byte{}
	for _, name := range []string{meshconfig.CASecret, meshconfig.ServerCertSecret, meshconfig.AdminCertSecret} {
		s, err := client.CoreV1().Secrets(meshconfig.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("the cluster is not enabled: %w", err)
		}
		secrets[name] = s.Data
	}
	caData := secrets[meshconfig.CASecret]
	if f.meshCA, err = certs.LoadCA(caData[meshconfig.KeyTLSCert], caData[meshconfig.KeyTLSKey]); err != nil {
		return nil, err
	}
	for _, w := range []struct {
		path   *string
		name   string
		secret string
		key    string
	}{
		{&f.ca, "ca.crt", meshconfig.CASecret, meshconfig.KeyTLSCert},
		{&f.serverCert, "server.crt", meshconfig.ServerCertSecret, meshconfig.KeyTLSCert},
		{&f.serverKey, "server.key", meshconfig.ServerCertSecret, meshconfig.KeyTLSKey},
		{&f.adminCert, "admin.crt", meshconfig.AdminCertSecret, meshconfig.KeyTLSCert},
		{&f.adminKey, "admin.key", meshconfig.AdminCertSecret, meshconfig.KeyTLSKey},
	} {
		*w.path = filepath.Join(dir, w.name)
		if err := os.WriteFile(*w.path, secrets[w.secret][w.key], 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Dial connects to endpoint trusting caPEM and presenting a certificate,
// as an agent does with a clustermesh entry; t's cleanup closes the
// client.
func Dial(t testing.TB, endpoint string, caPEM, certPEM, keyPEM []byte) *clientv3.Client {
	t.Helper()
	pool, err := certs.NewCertPool(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		TLS:         &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
