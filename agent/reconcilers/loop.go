// Package reconcilers programs the datapath's BPF maps from the agent's
// merged state: the ipcache (pod and node addresses to identity, tunnel
// endpoint and cluster) and the global service maps (frontends, backend
// slots, backends with affinity).
//
// Each reconciler follows a change set of the state: after a short debounce
// it reads the desired values of just the changed keys and writes only
// those, in batches. A full pass (dump the map, compare with the whole
// state, write the differences and delete what is not desired) runs only
// once pruning is allowed — after the agent's initial sync, so that a
// restarting agent never flushes the pinned maps the datapath is using —
// and then periodically to repair drift.
//
// It must not import apiserver/ or the packages that feed the state.
package reconcilers

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// LoopConfig is the timing every reconciler shares.
type LoopConfig struct {
	// Debounce is how long a reconciler waits after a change for more to
	// arrive before it writes, so that bursts become batches. Zero means
	// 10ms.
	Debounce time.Duration
	// ResyncInterval is the period of full passes once pruning is allowed.
	// Zero means 5 minutes.
	ResyncInterval time.Duration
	// RetryInterval is the wait before a failed pass is retried. Zero
	// means 5s.
	RetryInterval time.Duration
}

func (c *LoopConfig) setDefaults() {
	if c.Debounce == 0 {
		c.Debounce = 10 * time.Millisecond
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = 5 * time.Minute
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = 5 * time.Second
	}
}

// loop is the schedule shared by the reconcilers.
type loop struct {
	logger *slog.Logger
	cfg    LoopConfig
	notify <-chan struct{}
	// requestFull asks the change set for a full pass.
	requestFull func()
	// pass applies pending changes; it returns an error when some were
	// not applied (and were put back).
	pass         func(ctx context.Context) error
	pruneAllowed atomic.Bool
}

// allowPrune enables full passes and requests one now.
func (l *loop) allowPrune() {
	l.pruneAllowed.Store(true)
	l.requestFull()
}

func (l *loop) run(ctx context.Context) {
	resync := time.NewTicker(l.cfg.ResyncInterval)
	defer resync.Stop()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-resync.C:
			if l.pruneAllowed.Load() {
				l.requestFull()
			}
			continue
		case <-retry:
			retry = nil
		case <-l.notify:
		}
		debounce := time.NewTimer(l.cfg.Debounce)
		select {
		case <-ctx.Done():
			debounce.Stop()
			return
		case <-debounce.C:
		}
		if err := l.pass(ctx); err != nil {
			l.logger.Error("Reconcile pass failed; retrying", logfields.Error, err, logfields.Duration, l.cfg.RetryInterval)
			retry = time.After(l.cfg.RetryInterval)
		}
	}
}
