package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// Status reports the lab, its processes and whether each kube-apiserver
// answers.
func (s *Supervisor) Status(ctx context.Context) state.Status {
	s.mu.Lock()
	st := state.Status{Name: s.plan.Config.WithDefaults().Name, Ready: s.ready, Lab: s.lab}
	for _, p := range s.processes {
		st.Processes = append(st.Processes, p.Status())
	}
	planes := maps.Clone(s.planes)
	lab := s.lab
	s.mu.Unlock()
	if lab == nil {
		return st
	}
	for _, c := range lab.Clusters {
		cs := state.ClusterStatus{Name: c.Name, KubeAPIServer: "not started"}
		if cp, ok := planes[c.Name]; ok {
			cs.KubeAPIServer = probeAPIServer(ctx, cp, c)
		}
		st.Clusters = append(st.Clusters, cs)
	}
	return st
}

func probeAPIServer(ctx context.Context, cp ControlPlane, c topology.Cluster) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	client, err := kubeClient(cp, c)
	if err != nil {
		return err.Error()
	}
	body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return fmt.Sprintf("not ready: %v", err)
	}
	if string(body) != "ok" {
		return "not ready: " + string(body)
	}
	return "ready"
}

// Restart restarts the supervised process called name and returns once it
// is ready again.
func (s *Supervisor) Restart(ctx context.Context, name string) error {
	p, ok := s.process(name)
	if !ok {
		return fmt.Errorf("no process %q in this lab; `isthmus lab status` lists them", name)
	}
	return p.Restart(ctx)
}

// serveControl answers the control API on the lab's socket until ctx ends.
func (s *Supervisor) serveControl(ctx context.Context) (stop func(), err error) {
	path := s.cfg.Dir.ControlSocket()
	_ = os.Remove(path) // left by a supervisor that died
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on the control socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+state.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Status(r.Context()))
	})
	mux.HandleFunc("POST "+state.PathRestart, func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("process")
		if err := s.Restart(r.Context(), name); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("control socket", logfields.Error, err)
		}
	}()
	return func() {
		_ = srv.Close()
		<-done
		_ = os.Remove(path)
	}, nil
}
