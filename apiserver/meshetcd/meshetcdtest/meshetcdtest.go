// Package meshetcdtest starts a real embedded mesh etcd for tests: TLS with
// client-certificate authentication and the users and roles of
// PROTOCOL.md "Access", as the apiserver runs it.
//
// Only tests import it.
package meshetcdtest

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd"
	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Env is a running mesh etcd and the PKI around it.
type Env struct {
	Cluster string
	CA      *certs.CA
	Dir     string
	// Files of the server certificate, its key and the client CA.
	CertFile, KeyFile, CAFile string
	// AdminCertFile and AdminKeyFile are the admin-<c> client certificate.
	AdminCertFile, AdminKeyFile string

	Etcd *meshetcd.Embedded
	// Admin is a client of user admin-<c>.
	Admin *clientv3.Client
}

// Options tune Start.
type Options struct {
	// MaxTxnOps as in meshetcd.EmbeddedConfig.
	MaxTxnOps uint
}

// Start runs a mesh etcd for cluster with auth set up; t's cleanup stops
// it. Under -short it skips t: this is the integration tier.
func Start(t testing.TB, cluster string, opts ...Options) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("integration tier (a real etcd); not run under -short")
	}
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	ca, err := certs.NewCA("isthmus-test-ca-"+cluster, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "meshetcd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	env := &Env{
		Cluster:       cluster,
		CA:            ca,
		Dir:           dir,
		CertFile:      filepath.Join(dir, "server.crt"),
		KeyFile:       filepath.Join(dir, "server.key"),
		CAFile:        filepath.Join(dir, "ca.crt"),
		AdminCertFile: filepath.Join(dir, "admin.crt"),
		AdminKeyFile:  filepath.Join(dir, "admin.key"),
	}
	srv, err := ca.IssueServer(certs.ServerOptions{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.IssueClient(protocol.AdminUser(cluster), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for path, data := range map[string][]byte{
		env.CertFile: srv.CertPEM, env.KeyFile: srv.KeyPEM, env.CAFile: ca.CertPEM(),
		env.AdminCertFile: admin.CertPEM, env.AdminKeyFile: admin.KeyPEM,
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env.start(t, o)
	if err := (meshetcd.Access{Cluster: cluster}).Apply(context.Background(), env.Admin); err != nil {
		t.Fatalf("set up etcd access: %v", err)
	}
	return env
}

func (env *Env) start(t testing.TB, o Options) {
	t.Helper()
	e, err := meshetcd.StartEmbedded(slog.New(slog.DiscardHandler), meshetcd.EmbeddedConfig{
		DataDir:       filepath.Join(env.Dir, "data"),
		ListenAddress: "127.0.0.1:0",
		CertFile:      env.CertFile,
		KeyFile:       env.KeyFile,
		ClientCAFile:  env.CAFile,
		MaxTxnOps:     o.MaxTxnOps,
	})
	if err != nil {
		t.Fatal(err)
	}
	env.Etcd = e
	t.Cleanup(e.Close)
	src, err := certs.NewFileSource(certs.FileSourceConfig{CertFile: env.AdminCertFile, KeyFile: env.AdminKeyFile, CAFile: env.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	env.Admin = env.MustClient(t, src.ClientConfig("127.0.0.1"))
}

// Restart stops etcd and starts it again on the same data directory (on a
// new port); Admin is a new client.
func (env *Env) Restart(t testing.TB) {
	t.Helper()
	env.Admin.Close()
	env.Etcd.Close()
	env.start(t, Options{})
}

// Endpoints are the client URLs of the running etcd.
func (env *Env) Endpoints() []string { return []string{env.Etcd.ClientURL()} }

// ClientTLS returns a TLS config presenting kp and trusting env's CA.
func (env *Env) ClientTLS(t testing.TB, kp *certs.KeyPair) *tls.Config {
	t.Helper()
	c, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: env.CA.Pool(), ServerName: "127.0.0.1"}
}

// Client returns a client of user, with a certificate of env's CA.
func (env *Env) Client(t testing.TB, user string) *clientv3.Client {
	t.Helper()
	kp, err := env.CA.IssueClient(user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return env.MustClient(t, env.ClientTLS(t, kp))
}

// MustClient connects with tlsConfig; t's cleanup closes the client.
func (env *Env) MustClient(t testing.TB, tlsConfig *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := env.Dial(tlsConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Dial connects with tlsConfig; the caller closes the client.
func (env *Env) Dial(tlsConfig *tls.Config) (*clientv3.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return meshetcd.NewClient(ctx, meshetcd.ClientConfig{Endpoints: env.Endpoints(), TLS: tlsConfig, DialTimeout: 5 * time.Second})
}
