// Package meshagent writes the node's MeshAgent object (apis/v1alpha1):
// the agent's view of every cluster of the mesh, which `isthmus status`
// reads through the Kubernetes API. The object is cluster-scoped, named
// after the node and owned by its Node, so it goes when the Node goes. It
// is created when missing; its status is written when it changes (looked
// at every CheckInterval) and at least every Heartbeat, whose time tells
// readers the agent is alive.
//
// RBAC: get, create meshagents; update meshagents/status; get nodes (for
// the owner reference).
//
// It must not import apiserver/, datapath/ or the other agent packages.
package meshagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// DefaultHeartbeat is how often the status is written when nothing
// changes. It is well within meshops.DefaultStaleAfter.
const DefaultHeartbeat = 30 * time.Second

// Config configures a Writer.
type Config struct {
	// MeshAgents is the isthmus.dev client's MeshAgents. Required.
	MeshAgents meshclient.MeshAgentInterface
	// Nodes reads the Node that owns the object; nil means the object
	// gets no owner.
	Nodes kubernetes.Interface
	// NodeName names the object. Required.
	NodeName string
	// Status returns the agent's current view; the Writer sets
	// LastHeartbeatTime and the counts. Required.
	Status func() v1alpha1.MeshAgentStatus
	// Heartbeat is the longest time between writes. Zero means
	// DefaultHeartbeat.
	Heartbeat time.Duration
	// CheckInterval is how often Status is called to look for changes.
	// Zero means 1s.
	CheckInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failed write,
	// doubling with jitter. Zero means 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// Registry receives the writer's metric; nil means none.
	Registry prometheus.Registerer
}

// Writer keeps the node's MeshAgent current. Run does the work; the other
// methods are safe for concurrent use.
type Writer struct {
	logger *slog.Logger
	cfg    Config
	writes *prometheus.CounterVec

	mu        sync.Mutex // guards the fields below
	lastWrite time.Time
	lastErr   error
}

// New returns a Writer.
func New(logger *slog.Logger, cfg Config) (*Writer, error) {
	if cfg.MeshAgents == nil || cfg.NodeName == "" || cfg.Status == nil {
		return nil, errors.New("meshagent: Config.MeshAgents, NodeName and Status are required")
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = time.Second
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = time.Minute
	}
	w := &Writer{logger: logger.With("meshAgent", cfg.NodeName), cfg: cfg}
	w.writes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "isthmus_agent_meshagent_writes_total",
		Help: "Writes of this node's MeshAgent status (read by `isthmus status`), by result (ok, error).",
	}, []string{"result"})
	for _, r := range []string{"ok", "error"} {
		w.writes.WithLabelValues(r)
	}
	if cfg.Registry != nil {
		if err := cfg.Registry.Register(w.writes); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// LastWrite returns when the status was last written, and the error of
// the last attempt, if it failed.
func (w *Writer) LastWrite() (time.Time, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastWrite, w.lastErr
}

// Run writes until ctx is done. It leaves the object behind: its aging
// heartbeat tells that the agent stopped.
func (w *Writer) Run(ctx context.Context) {
	tick := time.NewTicker(w.cfg.CheckInterval)
	defer tick.Stop()
	var (
		obj       *v1alpha1.MeshAgent // as last read or written
		written   *v1alpha1.MeshAgentStatus
		lastWrite time.Time
		backoff   = w.cfg.MinBackoff
		retry     <-chan time.Time
		failures  int
	)
	for {
		st := w.cfg.Status()
		due := written == nil || time.Since(lastWrite) >= w.cfg.Heartbeat || !apiequality.Semantic.DeepEqual(st, *written)
		if due && retry == nil {
			var err error
			obj, err = w.write(ctx, obj, st)
			if ctx.Err() != nil {
				return
			}
			w.mu.Lock()
			w.lastErr = err
			if err == nil {
				w.lastWrite = time.Now()
			}
			w.mu.Unlock()
			if err != nil {
				w.writes.WithLabelValues("error").Inc()
				failures++
				wait := backoff + time.Duration(rand.Int64N(int64(backoff)/2+1))
				// The first failures are often the CRD or the Node
				// arriving late; say so once, then keep it quieter.
				log := w.logger.Warn
				if failures > 3 {
					log = w.logger.Debug
				}
				log("Could not write the MeshAgent status; retrying", logfields.Error, err, logfields.Duration, wait)
				retry = time.After(wait)
				backoff = min(2*backoff, w.cfg.MaxBackoff)
			} else {
				w.writes.WithLabelValues("ok").Inc()
				if failures > 0 {
					w.logger.Info("Wrote the MeshAgent status")
				}
				failures, backoff = 0, w.cfg.MinBackoff
				written, lastWrite = &st, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-retry:
			retry = nil
		case <-tick.C:
		}
	}
}

// write creates the object if needed and writes st as its status. It
// returns the object as written, or nil when it must be read again.
func (w *Writer) write(ctx context.Context, obj *v1alpha1.MeshAgent, st v1alpha1.MeshAgentStatus) (*v1alpha1.MeshAgent, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	api := w.cfg.MeshAgents
	if obj == nil {
		var err error
		obj, err = api.Get(ctx, w.cfg.NodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			obj, err = api.Create(ctx, w.newObject(ctx), metav1.CreateOptions{FieldManager: "isthmus-agent"})
		}
		if err != nil {
			return nil, explain(err)
		}
	}
	now := metav1.Now()
	st.LastHeartbeatTime = &now
	st.CountClusters()
	next := obj.DeepCopy()
	next.Status = st
	out, err := api.UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: "isthmus-agent"})
	if err != nil {
		// A conflict or a deleted object: read (or create) it again.
		return nil, explain(err)
	}
	return out, nil
}

func (w *Writer) newObject(ctx context.Context) *v1alpha1.MeshAgent {
	obj := &v1alpha1.MeshAgent{ObjectMeta: metav1.ObjectMeta{Name: w.cfg.NodeName}}
	if w.cfg.Nodes == nil {
		return obj
	}
	node, err := w.cfg.Nodes.CoreV1().Nodes().Get(ctx, w.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		w.logger.Warn("Cannot read the Node to own the MeshAgent; creating it without an owner (delete it by hand when the node goes)", logfields.Error, err)
		return obj
	}
	obj.OwnerReferences = []metav1.OwnerReference{{
		APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
	}}
	return obj
}

func explain(err error) error {
	switch {
	case apierrors.IsNotFound(err) && isMissingResource(err):
		return fmt.Errorf("%w (is the MeshAgent CRD installed? `isthmus enable` or the Helm chart installs it)", err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%w (the agent's RBAC must allow get/create meshagents and update meshagents/status)", err)
	}
	return err
}

// isMissingResource tells a 404 for the resource type (no CRD) from one
// for the object.
func isMissingResource(err error) bool {
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		return false
	}
	d := se.Status().Details
	return d == nil || d.Name == ""
}
