package meshetcd

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// EmbeddedConfig configures the embedded etcd.
type EmbeddedConfig struct {
	// DataDir holds etcd's data; starting again on it keeps the data.
	// Required.
	DataDir string
	// ListenAddress is the host:port mesh clients connect to over TLS.
	// Port 0 picks a free port (see Embedded.ClientURL).
	ListenAddress string
	// CertFile and KeyFile are the server certificate; ClientCAFile the
	// CAs client certificates must chain to. Rotated files are used for
	// new connections without a restart.
	CertFile     string
	KeyFile      string
	ClientCAFile string
	// MaxTxnOps is the most operations one transaction may hold. Zero means
	// etcd's default of 128.
	MaxTxnOps uint
	// StartTimeout bounds the wait for etcd to be ready. Zero means a
	// minute.
	StartTimeout time.Duration
}

// Embedded is a running embedded etcd. Close stops it.
type Embedded struct {
	etcd      *embed.Etcd
	clientURL url.URL
	closeOnce sync.Once
}

// compactionRetention keeps this much history: readers that reconnect
// within it resume their watch, later ones list again.
const compactionRetention = "10m"

// StartEmbedded starts etcd and waits until it serves clients.
//
// Clients connect over TLS and must present a certificate of the client
// CAs; the certificate's common name is the etcd user. The gRPC listener
// uses a certs.FileSource, so rotated certificate and CA files take effect
// for new connections; etcd's small HTTP endpoint (health, metrics) is
// served on a unix socket in the data directory only.
func StartEmbedded(logger *slog.Logger, cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded etcd: no data directory given")
	}
	if cfg.CertFile == "" || cfg.KeyFile == "" || cfg.ClientCAFile == "" {
		return nil, errors.New("embedded etcd: server certificate, key and client CA files are all required (etcd is only served with client-certificate authentication)")
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = time.Minute
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	src, err := certs.NewFileSource(certs.FileSourceConfig{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, CAFile: cfg.ClientCAFile})
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	serverTLS, err := src.ServerConfig()
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	host, port, err := net.SplitHostPort(cfg.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: listen address %q: %w", cfg.ListenAddress, err)
	}
	httpSock := filepath.Join(cfg.DataDir, "etcd-http.sock")
	if len(httpSock) > 100 {
		return nil, fmt.Errorf("embedded etcd: data directory path %q is too long for a unix socket in it; use a shorter path", cfg.DataDir)
	}

	ec := embed.NewConfig()
	ec.Name = "isthmus"
	ec.Dir = cfg.DataDir
	ec.ListenClientUrls = []url.URL{{Scheme: "https", Host: cfg.ListenAddress}}
	ec.AdvertiseClientUrls = []url.URL{{Scheme: "https", Host: net.JoinHostPort(advertiseHost(host), port)}}
	// A separate HTTP listener puts etcd in split mode, where the client
	// listener serves gRPC only and its TLS is the gRPC server's
	// credentials, which the option below replaces with the reloading ones.
	ec.ListenClientHttpUrls = []url.URL{{Scheme: "unix", Path: httpSock}}
	ec.GRPCAdditionalServerOptions = []grpc.ServerOption{grpc.Creds(credentials.NewTLS(serverTLS))}
	ec.ClientTLSInfo = transport.TLSInfo{
		CertFile:       cfg.CertFile,
		KeyFile:        cfg.KeyFile,
		TrustedCAFile:  cfg.ClientCAFile,
		ClientCertAuth: true,
	}
	// One member: peers never dial it, but etcd needs a peer URL.
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenPeerUrls = []url.URL{peer}
	ec.AdvertisePeerUrls = []url.URL{peer}
	ec.InitialCluster = ec.Name + "=" + peer.String()
	ec.EnableGRPCGateway = false
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = compactionRetention
	if cfg.MaxTxnOps != 0 {
		ec.MaxTxnOps = cfg.MaxTxnOps
	}
	ec.Logger = "zap"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapLogger(logger.With(logfields.Component, "etcd")))

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	case <-time.After(cfg.StartTimeout):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("start embedded etcd: not ready after %v", cfg.StartTimeout)
	}
	em := &Embedded{etcd: e}
	for _, l := range e.Clients {
		if l.Addr().Network() == "tcp" {
			_, port, _ := net.SplitHostPort(l.Addr().String())
			em.clientURL = url.URL{Scheme: "https", Host: net.JoinHostPort(advertiseHost(host), port)}
		}
	}
	logger.Info("embedded etcd serving", logfields.Endpoint, em.clientURL.String(), "dataDir", cfg.DataDir)
	return em, nil
}

// DialHost is the host a local client dials to reach a listener on host:
// loopback for an unspecified address, host itself otherwise.
func DialHost(host string) string { return advertiseHost(host) }

func advertiseHost(host string) string {
	ip := net.ParseIP(host)
	switch {
	case host == "", ip != nil && ip.IsUnspecified() && ip.To4() != nil:
		return "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		return "::1"
	}
	return host
}

// ClientURL is the https URL a local client reaches etcd at, with the port
// actually bound.
func (e *Embedded) ClientURL() string { return e.clientURL.String() }

// Err reports a fatal error of the running etcd.
func (e *Embedded) Err() <-chan error { return e.etcd.Err() }

// Close stops etcd and waits for it to finish.
// Closing again does nothing.
func (e *Embedded) Close() { e.closeOnce.Do(e.etcd.Close) }
