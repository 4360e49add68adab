package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"time"

	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"

	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// IPCacheConfig configures an IPCacheReconciler.
type IPCacheConfig struct {
	LoopConfig
	// State is the merged state to program. Required.
	State *state.State
	// Map is the pinned ipcache. Required.
	Map *dpmaps.IPCache
	// Metrics, shared by all reconcilers. Nil means none.
	Metrics *Metrics
}

// IPCacheReconciler keeps the ipcache map equal to the state's merged
// ipcache. Run does the work; the other methods are safe for concurrent
// use.
type IPCacheReconciler struct {
	logger  *slog.Logger
	cfg     IPCacheConfig
	changes *state.Changes[netip.Prefix]
	metrics *mapMetrics
	loop    loop

	mu sync.Mutex // guards present
	// present is the set of prefixes this process wrote and did not
	// delete since, which the entries metric reports.
	present map[netip.Prefix]struct{}
}

// NewIPCache returns an IPCacheReconciler subscribed to cfg.State.
func NewIPCache(logger *slog.Logger, cfg IPCacheConfig) (*IPCacheReconciler, error) {
	if cfg.State == nil || cfg.Map == nil {
		return nil, errors.New("reconcilers: IPCacheConfig.State and Map are required")
	}
	cfg.setDefaults()
	r := &IPCacheReconciler{
		logger:  logger.With(logfields.Map, dpmaps.NameIPCache),
		cfg:     cfg,
		changes: cfg.State.SubscribeIPCache(),
		metrics: cfg.Metrics.forMap(dpmaps.NameIPCache, cfg.Map.Map().MaxEntries()),
		present: make(map[netip.Prefix]struct{}),
	}
	r.loop = loop{logger: r.logger, cfg: cfg.LoopConfig, notify: r.changes.Notify(), requestFull: r.changes.RequestFull, pass: r.pass}
	return r, nil
}

// Run reconciles until ctx is done.
func (r *IPCacheReconciler) Run(ctx context.Context) { r.loop.run(ctx) }

// AllowPrune enables full passes, which delete entries the state does not
// hold, and runs one. Call it once the initial state is complete.
func (r *IPCacheReconciler) AllowPrune() { r.loop.allowPrune() }

// Entries returns how many entries this process has programmed.
func (r *IPCacheReconciler) Entries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.present)
}

func ipcacheValue(e state.IPCacheEntry) dpmaps.IPCacheValue {
	var flags uint8
	if e.LocalNode {
		flags |= dpmaps.IPCacheFlagLocalNode
	}
	if e.Node {
		flags |= dpmaps.IPCacheFlagNode
	}
	return dpmaps.IPCacheValue{
		Identity:       uint32(e.Identity),
		TunnelEndpoint: dpmaps.AddrFrom(e.TunnelEndpoint),
		ClusterID:      uint16(e.ClusterID),
		Flags:          flags,
	}
}

func (r *IPCacheReconciler) pass(ctx context.Context) error {
	keys, full := r.changes.Take()
	if full && r.loop.pruneAllowed.Load() {
		return r.fullPass(keys)
	}
	if len(keys) == 0 {
		return nil
	}
	started := time.Now()
	d := &dpmaps.Diff[dpmaps.IPCacheKey, dpmaps.IPCacheValue]{}
	var wrote, deleted []netip.Prefix
	var bad []error
	r.cfg.State.ResolveIPCache(maps.Keys(keys), func(p netip.Prefix, e state.IPCacheEntry, ok bool) {
		k, err := dpmaps.IPCacheKeyOf(p)
		if err != nil {
			bad = append(bad, err)
			return
		}
		if ok {
			d.WriteKeys = append(d.WriteKeys, k)
			d.WriteValues = append(d.WriteValues, ipcacheValue(e))
			wrote = append(wrote, p)
		} else {
			d.DeleteKeys = append(d.DeleteKeys, k)
			deleted = append(deleted, p)
		}
	})
	_, werr := d.Write(r.cfg.Map.Map())
	_, derr := d.Delete(r.cfg.Map.Map())
	now := time.Now()
	r.mu.Lock()
	for _, p := range wrote {
		r.present[p] = struct{}{}
	}
	for _, p := range deleted {
		delete(r.present, p)
	}
	n := len(r.present)
	r.mu.Unlock()
	r.metrics.setEntries(n)
	r.metrics.observePass(false, started)
	if err := errors.Join(werr, derr); err != nil {
		// Which keys failed is unknown: put them all back for the retry.
		r.metrics.writeErrors.Inc()
		r.changes.Requeue(keys)
		return fmt.Errorf("write %d and delete %d ipcache entries: %w", len(d.WriteKeys), len(d.DeleteKeys), err)
	}
	observePropagation(r.metrics.propagation, keys, now)
	if len(bad) > 0 {
		r.logger.Warn("Skipped ipcache entries the map cannot hold", logfields.Error, errors.Join(bad...))
	}
	return nil
}

// fullPass makes the map hold exactly the merged state.
func (r *IPCacheReconciler) fullPass(keys map[netip.Prefix]time.Time) error {
	started := time.Now()
	desired := make(map[dpmaps.IPCacheKey]dpmaps.IPCacheValue)
	present := make(map[netip.Prefix]struct{})
	var bad []error
	r.cfg.State.AllIPCache(func(p netip.Prefix, e state.IPCacheEntry) {
		k, err := dpmaps.IPCacheKeyOf(p)
		if err != nil {
			bad = append(bad, err)
			return
		}
		desired[k] = ipcacheValue(e)
		present[p] = struct{}{}
	})
	st, err := dpmaps.Reconcile(r.cfg.Map.Map(), desired)
	now := time.Now()
	r.mu.Lock()
	r.present = present
	r.mu.Unlock()
	r.metrics.setEntries(len(present))
	r.metrics.observePass(true, started)
	r.logger.Info("Reconciled the whole ipcache", logfields.Count, len(desired), "added", st.Added, "updated", st.Updated, "deleted", st.Deleted, "unchanged", st.Unchanged, logfields.Duration, time.Since(started))
	if err != nil {
		r.metrics.writeErrors.Inc()
		r.changes.Requeue(keys)
		r.changes.RequestFull()
		return fmt.Errorf("reconcile ipcache: %w", err)
	}
	observePropagation(r.metrics.propagation, keys, now)
	if len(bad) > 0 {
		r.logger.Warn("Skipped ipcache entries the map cannot hold", logfields.Error, errors.Join(bad...))
	}
	return nil
}
