package meshetcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// ClientConfig configures a client of a mesh etcd.
type ClientConfig struct {
	// Endpoints are https URLs. Required.
	Endpoints []string
	// TLS carries the client certificate (its CN is the etcd user) and the
	// CAs the server is verified with, e.g. from certs.FileSource. Required.
	TLS *tls.Config
	// DialTimeout bounds the first connection. Zero means 10 seconds.
	DialTimeout time.Duration
	// Logger receives the client library's warnings. Nil discards them.
	Logger *slog.Logger
}

// NewClient connects to etcd and checks it answers. The caller closes the
// client.
func NewClient(ctx context.Context, cfg ClientConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd client: no endpoints given")
	}
	if cfg.TLS == nil {
		return nil, errors.New("etcd client: no TLS config given; the mesh etcd only accepts client certificates")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.DialTimeout,
		Logger:      zapLogger(cfg.Logger.With(logfields.Component, "etcd-client")),
		// Without keepalives a silently dropped connection would only be
		// noticed at the next request's timeout.
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		Context:              context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", cfg.Endpoints, err)
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	// Any request proves the TLS handshake and the user; a missing key is
	// fine.
	if _, err := cli.Get(cctx, "cilium/.heartbeat", clientv3.WithCountOnly()); err != nil && !isPermissionDenied(err) {
		cli.Close()
		return nil, fmt.Errorf("reach etcd at %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}
