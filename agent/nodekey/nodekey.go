// Package nodekey publishes the node's WireGuard public key on its
// Kubernetes Node, as the annotation meshconfig.NodeWireGuardPubKeyAnnotation,
// which the cluster's mesh apiserver exports to every other cluster
// (protocol.Node.WireguardPubKey) so that their nodes can make this one a
// peer. It watches this one Node and writes the annotation again whenever
// it is missing or differs, e.g. after the Node was deleted and
// registered again.
//
// RBAC: list and watch nodes (with a field selector on the node's name)
// and patch nodes.
//
// It must not import apiserver/, datapath/ or the other agent packages.
package nodekey

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// Config configures a Publisher.
type Config struct {
	// Client talks to the local cluster. Required.
	Client kubernetes.Interface
	// NodeName is the Node to annotate. Required.
	NodeName string
	// Key is the base64 public key to publish. Required.
	Key string
	// MinBackoff and MaxBackoff bound the wait between failed writes,
	// which doubles from one to the other, with jitter. Zero means 500ms
	// and 30s.
	MinBackoff, MaxBackoff time.Duration
	// Registry receives the isthmus_agent_wireguard_key_published gauge;
	// nil means none.
	Registry prometheus.Registerer
}

// Publisher keeps the annotation on the Node. Run does the work;
// Published is safe for concurrent use.
type Publisher struct {
	logger    *slog.Logger
	cfg       Config
	published atomic.Bool
	gauge     prometheus.Gauge
}

// New returns a Publisher.
func New(logger *slog.Logger, cfg Config) (*Publisher, error) {
	if cfg.Client == nil || cfg.NodeName == "" || cfg.Key == "" {
		return nil, errors.New("nodekey: Config.Client, NodeName and Key are required")
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	p := &Publisher{logger: logger.With(logfields.Node, cfg.NodeName), cfg: cfg}
	p.gauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "isthmus_agent_wireguard_key_published",
		Help: "1 while this node's Node object carries its WireGuard public key (annotation " + meshconfig.NodeWireGuardPubKeyAnnotation + "), 0 otherwise.",
	})
	if cfg.Registry != nil {
		if err := cfg.Registry.Register(p.gauge); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Published reports whether the Node was last seen carrying the key.
func (p *Publisher) Published() bool { return p.published.Load() }

func (p *Publisher) setPublished(v bool) {
	p.published.Store(v)
	if v {
		p.gauge.Set(1)
	} else {
		p.gauge.Set(0)
	}
}

// Run keeps the annotation in place until ctx is done.
func (p *Publisher) Run(ctx context.Context) {
	factory := informers.NewSharedInformerFactoryWithOptions(p.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", p.cfg.NodeName).String()
		}))
	nodes := factory.Core().V1().Nodes()
	changed := make(chan struct{}, 1)
	notify := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: notify, UpdateFunc: func(_, n any) { notify(n) }, DeleteFunc: notify,
	}); err != nil {
		p.logger.Error("Cannot watch the Node; the WireGuard key is not published", logfields.Error, err)
		return
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nodes.Informer().HasSynced) {
		return
	}
	notify(nil)

	backoff := p.cfg.MinBackoff
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-retry:
		}
		retry = nil
		node, err := nodes.Lister().Get(p.cfg.NodeName)
		if apierrors.IsNotFound(err) {
			p.setPublished(false)
			p.logger.Warn("Node does not exist (yet); the WireGuard key is published once it does")
			continue
		}
		if err != nil {
			p.logger.Error("Read the Node", logfields.Error, err)
			continue
		}
		if node.Annotations[meshconfig.NodeWireGuardPubKeyAnnotation] == p.cfg.Key {
			if !p.published.Load() {
				p.logger.Info("Node carries this node's WireGuard public key", "publicKey", p.cfg.Key)
			}
			p.setPublished(true)
			backoff = p.cfg.MinBackoff
			continue
		}
		p.setPublished(false)
		if err := p.patch(ctx, node); err != nil {
			wait := jitter(backoff)
			p.logger.Warn("Could not publish the WireGuard public key on the Node; retrying", logfields.Error, err, logfields.Duration, wait)
			retry = time.After(wait)
			backoff = min(2*backoff, p.cfg.MaxBackoff)
			continue
		}
		// The watch brings the patched Node, which confirms it.
	}
}

func (p *Publisher) patch(ctx context.Context, node *corev1.Node) error {
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{
			"annotations": map[string]string{meshconfig.NodeWireGuardPubKeyAnnotation: p.cfg.Key},
		},
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := p.cfg.Client.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "isthmus-agent"}); err != nil {
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("patch Node %s: %w (the agent's RBAC must allow patching nodes)", node.Name, err)
		}
		return fmt.Errorf("patch Node %s: %w", node.Name, err)
	}
	p.logger.Info("Published the WireGuard public key on the Node", "annotation", meshconfig.NodeWireGuardPubKeyAnnotation, "publicKey", p.cfg.Key)
	return nil
}

// jitter spreads retries of many nodes: d plus up to a half of it.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration(rand.Int64N(int64(d)/2+1))
}
