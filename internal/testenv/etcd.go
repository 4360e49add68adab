package testenv

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/internal/embedetcd"
)

// EtcdOptions configure Etcd. The zero value serves plain HTTP.
type EtcdOptions struct {
	// TLS makes the server serve TLS; nil means plain HTTP.
	TLS *EtcdTLS
}

// EtcdTLS names PEM files for the server and for the client Etcd returns.
type EtcdTLS struct {
	// CertFile and KeyFile are the server's certificate (valid for
	// 127.0.0.1) and key.
	CertFile, KeyFile string
	// CAFile is the CA the server certificate chains to; the returned
	// client trusts it.
	CAFile string
	// ClientCAFile, when set, makes the server require client
	// certificates signed by it; a certificate's common name is its etcd
	// user once auth is enabled.
	ClientCAFile string
	// ClientCertFile and ClientKeyFile are the returned client's
	// certificate and key; needed when ClientCAFile is set.
	ClientCertFile, ClientKeyFile string
}

// EtcdServer is a running etcd for one test.
type EtcdServer struct {
	// Endpoints are the client URLs (https:// with TLS).
	Endpoints []string
	// Client is connected and has answered a request. It is closed after
	// the test.
	Client *clientv3.Client
}

// Etcd starts a real embedded etcd on loopback, with kernel-picked ports
// and its data in t.TempDir(), and a client to it; both stop when the test
// ends.
func Etcd(t testing.TB, opts EtcdOptions) *EtcdServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := embedetcd.Config{DataDir: t.TempDir()}
	if opts.TLS != nil {
		cfg.TLS = &embedetcd.TLS{CertFile: opts.TLS.CertFile, KeyFile: opts.TLS.KeyFile, ClientCAFile: opts.TLS.ClientCAFile}
	}
	srv, err := embedetcd.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(srv.Close)

	clientCfg := clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 10 * time.Second}
	if opts.TLS != nil {
		info := transport.TLSInfo{
			CertFile:      opts.TLS.ClientCertFile,
			KeyFile:       opts.TLS.ClientKeyFile,
			TrustedCAFile: opts.TLS.CAFile,
		}
		if clientCfg.TLS, err = info.ClientConfig(); err != nil {
			t.Fatalf("testenv: etcd client TLS: %v", err)
		}
	}
	client, err := clientv3.New(clientCfg)
	if err != nil {
		t.Fatalf("testenv: etcd client: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() })
	if _, err := client.Get(ctx, "health-check-of-testenv"); err != nil {
		t.Fatalf("testenv: etcd at %v does not answer: %v", srv.Endpoints(), err)
	}
	return &EtcdServer{Endpoints: srv.Endpoints(), Client: client}
}
