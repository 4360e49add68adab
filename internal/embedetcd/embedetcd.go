// Package embedetcd runs a single-member etcd server inside the calling
// process, listening on loopback with ports the kernel picks, optionally
// serving TLS with client-certificate authentication. It backs the local
// control plane (internal/controlplane) and the integration tests of mesh
// components (internal/testenv); it is not the mesh apiserver's production
// etcd, whose configuration is the apiserver's own business.
//
// It must not import apiserver/, agent/, datapath/, cmd/ or any other
// Isthmus package.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Config says how to run the server.
type Config struct {
	// DataDir holds the member's data; required. The log goes to
	// DataDir/etcd.log unless LogFile is set.
	DataDir string
	// LogFile receives etcd's log. Empty means DataDir/etcd.log.
	LogFile string
	// Host is the loopback (or other local) IP to listen on. Empty means
	// 127.0.0.1.
	Host string
	// TLS, when set, makes the client port serve TLS; nil means plain
	// HTTP.
	TLS *TLS
	// Durable keeps fsync on. The zero value turns it off: the servers
	// this package runs are throwaway (tests, the local lab), and fsync
	// dominates their start-up on a busy disk. Data survives a process
	// crash either way, but not a machine crash without fsync.
	Durable bool
	// StartTimeout bounds the wait for the server to become ready, on top
	// of ctx. Zero means one minute.
	StartTimeout time.Duration
}

// TLS names the PEM files of the client listener.
type TLS struct {
	CertFile string // server certificate, with 127.0.0.1 / localhost SANs
	KeyFile  string // its private key
	// ClientCAFile, when set, makes the server require client
	// certificates signed by it (etcd's --client-cert-auth); the common
	// name of a client certificate is its etcd user when auth is enabled.
	ClientCAFile string
}

// Server is a running etcd. Its methods are safe for concurrent use.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	closeOnce sync.Once
}

// Start starts the server and waits until it serves clients. ctx bounds
// only the start; Close stops the server.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("start etcd: Config.DataDir is empty; give it a directory")
	}
	host := cfg.Host
	if host == "" {
		host = "127.0.0.1"
	}
	logFile := cfg.LogFile
	if logFile == "" {
		logFile = filepath.Join(cfg.DataDir, "etcd.log")
	}
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = "default"
	ec.Dir = filepath.Join(cfg.DataDir, "member")
	ec.Logger = "zap"
	ec.LogLevel = "info"
	ec.LogOutputs = []string{logFile}
	ec.UnsafeNoFsync = !cfg.Durable
	// Port 0: the kernel picks free ports, so parallel servers (several
	// test binaries, several lab clusters) never collide. The single
	// member never dials its own peer URL, so advertising port 0 is moot.
	clientScheme := "http"
	if cfg.TLS != nil {
		clientScheme = "https"
		ec.ClientTLSInfo = transport.TLSInfo{
			CertFile:       cfg.TLS.CertFile,
			KeyFile:        cfg.TLS.KeyFile,
			TrustedCAFile:  cfg.TLS.ClientCAFile,
			ClientCertAuth: cfg.TLS.ClientCAFile != "",
		}
	}
	clientURL := url.URL{Scheme: clientScheme, Host: net.JoinHostPort(host, "0")}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort(host, "0")}
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.AdvertiseClientUrls = []url.URL{clientURL}
	ec.ListenPeerUrls = []url.URL{peerURL}
	ec.AdvertisePeerUrls = []url.URL{peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start etcd (log %s): %w", logFile, err)
	}
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("start etcd (log %s): %w", logFile, err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("start etcd: %w", context.Cause(ctx))
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("start etcd: not ready after %s; see %s", timeout, logFile)
	}
	s := &Server{etcd: e}
	for _, l := range e.Clients {
		s.endpoints = append(s.endpoints, clientScheme+"://"+l.Addr().String())
	}
	return s, nil
}

// Endpoints returns the client URLs, e.g. https://127.0.0.1:41234.
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// Close stops the server and waits until its goroutines and listeners are
// gone. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(s.etcd.Close)
}
