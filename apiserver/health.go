package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// readiness answers /readyz: ready once the initial export is complete and
// while etcd answers.
type readiness interface {
	Ready(ctx context.Context) error
}

// healthServer serves /healthz, /readyz and /metrics.
type healthServer struct {
	srv *http.Server
	l   net.Listener
}

func startHealthServer(logger *slog.Logger, addr string, ready readiness, m *metrics) (*healthServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health address: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := ready.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry}))
	h := &healthServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, l: l}
	go func() {
		if err := h.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("health server", logfields.Error, err)
		}
	}()
	logger.Info("serving health and metrics", logfields.Endpoint, "http://"+l.Addr().String())
	return h, nil
}

// Addr is the address actually bound.
func (h *healthServer) Addr() string { return h.l.Addr().String() }

func (h *healthServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.srv.Shutdown(ctx)
}
