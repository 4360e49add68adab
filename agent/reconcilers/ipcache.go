package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
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
	}
	r.loop = loop{logger: r.logger, cfg: cfg.LoopConfig, notify: r.changes.Notify(), requestFull: r.changes.RequestFull, pass: r.pass}
	return r, nil
}

// Run reconciles until ctx is done.
func (r *IPCacheReconciler) Run(ctx context.Context) { r.loop.run(ctx) }

// AllowPrune enables full passes, which delete entries the state does not
// hold, and runs one. Call it once the initial state is complete.
func (r *IPCacheReconciler) AllowPrune() { r.loop.allowPrune() }

// Entries returns how many entries the map holds once the reconciler has
// caught up: the merged state's prefixes. (Stale entries a previous agent
// left are not counted; they go with the first full pass.)
func (r *IPCacheReconciler) Entries() int { return r.cfg.State.IPCacheSize() }

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

// passChunk bounds the keys one write batch carries, so that the buffers
// of a pass stay small however large the backlog (an initial sync).
const passChunk = 8192

func (r *IPCacheReconciler) pass(ctx context.Context) error {
	for ctx.Err() == nil {
		keys, full := r.changes.Take(passChunk)
		if full && r.loop.pruneAllowed.Load() {
			rest, _ := r.changes.Take(0)
			maps.Copy(keys, rest)
			return r.fullPass(keys)
		}
		if len(keys) == 0 {
			return nil
		}
		if err := r.apply(keys); err != nil {
			return err
		}
		if len(keys) < passChunk {
			return nil
		}
	}
	return nil
}

// apply writes the desired entries of keys and deletes the ones no
// cluster holds any more.
func (r *IPCacheReconciler) apply(keys map[netip.Prefix]state.Stamp) error {
	started := time.Now()
	d := &dpmaps.Diff[dpmaps.IPCacheKey, dpmaps.IPCacheValue]{}
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
		} else {
			d.DeleteKeys = append(d.DeleteKeys, k)
		}
	})
	_, werr := d.Write(r.cfg.Map.Map())
	_, derr := d.Delete(r.cfg.Map.Map())
	now := time.Now()
	r.metrics.setEntries(r.Entries())
	r.metrics.observePass(false, started)
	if err := errors.Join(werr, derr); err != nil {
		// Which keys failed is unknown: put them all back for the retry.
		r.metrics.writeErrors.Inc()
		r.changes.Requeue(keys)
		return fmt.Errorf("write %d and delete %d ipcache entries: %w", len(d.WriteKeys), len(d.DeleteKeys), err)
	}
	r.observe(keys, now)
	if len(bad) > 0 {
		r.logger.Warn("Skipped ipcache entries the map cannot hold", logfields.Error, errors.Join(bad...))
	}
	return nil
}

func (r *IPCacheReconciler) observe(keys map[netip.Prefix]state.Stamp, now time.Time) {
	for _, s := range keys {
		r.metrics.propagation.Observe(r.changes.Age(s, now).Seconds())
	}
}

// fullPass makes the map hold exactly the merged state: it reads the map
// once and compares it with the state entry by entry, without building the
// desired map in memory, then writes the differences and deletes the rest.
func (r *IPCacheReconciler) fullPass(keys map[netip.Prefix]state.Stamp) error {
	started := time.Now()
	cur, err := dpmaps.Dump[dpmaps.IPCacheKey, dpmaps.IPCacheValue](r.cfg.Map.Map())
	if err != nil {
		r.changes.Requeue(keys)
		r.changes.RequestFull()
		return fmt.Errorf("read ipcache: %w", err)
	}
	d := &dpmaps.Diff[dpmaps.IPCacheKey, dpmaps.IPCacheValue]{}
	var bad []error
	unchanged, n := 0, 0
	r.cfg.State.AllIPCache(func(p netip.Prefix, e state.IPCacheEntry) {
		k, err := dpmaps.IPCacheKeyOf(p)
		if err != nil {
			bad = append(bad, err)
			return
		}
		n++
		v := ipcacheValue(e)
		if old, ok := cur[k]; ok && old == v {
			unchanged++
		} else {
			d.WriteKeys = append(d.WriteKeys, k)
			d.WriteValues = append(d.WriteValues, v)
		}
		delete(cur, k)
	})
	for k := range cur {
		d.DeleteKeys = append(d.DeleteKeys, k)
	}
	_, werr := d.Write(r.cfg.Map.Map())
	_, derr := d.Delete(r.cfg.Map.Map())
	now := time.Now()
	r.metrics.setEntries(n)
	r.metrics.observePass(true, started)
	r.logger.Info("Reconciled the whole ipcache", logfields.Count, n, "written", len(d.WriteKeys), "deleted", len(d.DeleteKeys), "unchanged", unchanged, logfields.Duration, time.Since(started))
	if err := errors.Join(werr, derr); err != nil {
		r.metrics.writeErrors.Inc()
		r.changes.Requeue(keys)
		r.changes.RequestFull()
		return fmt.Errorf("reconcile ipcache: %w", err)
	}
	r.observe(keys, now)
	if len(bad) > 0 {
		r.logger.Warn("Skipped ipcache entries the map cannot hold", logfields.Error, errors.Join(bad...))
	}
	return nil
}
