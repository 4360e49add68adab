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

// IPCacheReconciler keeps the ipcache (the isthmus_iphosts hash of host
// entries and the isthmus_ipcache trie of wider prefixes) equal to the
// state's merged ipcache. Run does the work; the other methods are safe
// for concurrent use.
type IPCacheReconciler struct {
	logger  *slog.Logger
	cfg     IPCacheConfig
	changes *state.Changes[netip.Prefix]
	// hosts and trie are the two maps' series; passes, propagation and
	// write errors are reported under the trie's name, isthmus_ipcache,
	// for the ipcache as a whole.
	hosts *mapMetrics
	trie  *mapMetrics
	loop  loop
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
		hosts:   cfg.Metrics.forMap(dpmaps.NameIPHosts, cfg.Map.HostsMap().MaxEntries()),
		trie:    cfg.Metrics.forMap(dpmaps.NameIPCache, cfg.Map.Map().MaxEntries()),
	}
	r.loop = loop{logger: r.logger, cfg: cfg.LoopConfig, notify: r.changes.Notify(), requestFull: r.changes.RequestFull, pass: r.pass}
	return r, nil
}

// Run reconciles until ctx is done.
func (r *IPCacheReconciler) Run(ctx context.Context) { r.loop.run(ctx) }

// AllowPrune enables full passes, which delete entries the state does not
// hold, and runs one. Call it once the initial state is complete.
func (r *IPCacheReconciler) AllowPrune() { r.loop.allowPrune() }

// Entries returns how many entries the two maps hold once the reconciler
// has caught up (the merged state's prefixes), and how many of them are
// host entries. Stale entries a previous agent left are not counted; they
// go with the first full pass.
func (r *IPCacheReconciler) Entries() (total, hosts int) { return r.cfg.State.IPCacheSize() }

func (r *IPCacheReconciler) setEntries() {
	total, hosts := r.Entries()
	r.hosts.setEntries(hosts)
	r.trie.setEntries(total - hosts)
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

// ipcacheDiff is what to change in the two maps of the ipcache.
type ipcacheDiff struct {
	hosts, trie dpmaps.Diff[dpmaps.IPCacheKey, dpmaps.IPCacheValue]
}

func (d *ipcacheDiff) of(k dpmaps.IPCacheKey) *dpmaps.Diff[dpmaps.IPCacheKey, dpmaps.IPCacheValue] {
	if k.IsHost() {
		return &d.hosts
	}
	return &d.trie
}

func (d *ipcacheDiff) write(k dpmaps.IPCacheKey, v dpmaps.IPCacheValue) {
	dd := d.of(k)
	dd.WriteKeys = append(dd.WriteKeys, k)
	dd.WriteValues = append(dd.WriteValues, v)
}

func (d *ipcacheDiff) delete(k dpmaps.IPCacheKey) {
	dd := d.of(k)
	dd.DeleteKeys = append(dd.DeleteKeys, k)
}

// apply writes the diff in batches: host entries before prefixes, so that
// a pod is found before a prefix covering it goes, and deletions after
// every write, prefixes first.
func (d *ipcacheDiff) apply(m *dpmaps.IPCache) error {
	var errs []error
	for _, step := range []func() (dpmaps.Stats, error){
		func() (dpmaps.Stats, error) { return d.hosts.Write(m.HostsMap()) },
		func() (dpmaps.Stats, error) { return d.trie.Write(m.Map()) },
		func() (dpmaps.Stats, error) { return d.trie.Delete(m.Map()) },
		func() (dpmaps.Stats, error) { return d.hosts.Delete(m.HostsMap()) },
	} {
		if _, err := step(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *ipcacheDiff) counts() (writes, deletes int) {
	return len(d.hosts.WriteKeys) + len(d.trie.WriteKeys), len(d.hosts.DeleteKeys) + len(d.trie.DeleteKeys)
}

// apply writes the desired entries of keys and deletes the ones no
// cluster holds any more.
func (r *IPCacheReconciler) apply(keys map[netip.Prefix]state.Stamp) error {
	started := time.Now()
	var d ipcacheDiff
	var bad []error
	r.cfg.State.ResolveIPCache(maps.Keys(keys), func(p netip.Prefix, e state.IPCacheEntry, ok bool) {
		k, err := dpmaps.IPCacheKeyOf(p)
		switch {
		case err != nil:
			bad = append(bad, err)
		case ok:
			d.write(k, ipcacheValue(e))
		default:
			d.delete(k)
		}
	})
	err := d.apply(r.cfg.Map)
	now := time.Now()
	r.setEntries()
	r.trie.observePass(false, started)
	if err != nil {
		// Which keys failed is unknown: put them all back for the retry.
		r.trie.writeErrors.Inc()
		r.changes.Requeue(keys)
		w, dl := d.counts()
		return fmt.Errorf("write %d and delete %d ipcache entries: %w", w, dl, err)
	}
	r.observe(keys, now)
	if len(bad) > 0 {
		r.logger.Warn("Skipped ipcache entries the map cannot hold", logfields.Error, errors.Join(bad...))
	}
	return nil
}

func (r *IPCacheReconciler) observe(keys map[netip.Prefix]state.Stamp, now time.Time) {
	for _, s := range keys {
		r.trie.propagation.Observe(r.changes.Age(s, now).Seconds())
	}
}

// fullPass makes the maps hold exactly the merged state: it reads each map
// once and compares it with the state entry by entry, without building the
// desired contents in memory, then writes the differences and deletes the
// rest.
func (r *IPCacheReconciler) fullPass(keys map[netip.Prefix]state.Stamp) error {
	started := time.Now()
	fail := func(err error) error {
		r.trie.writeErrors.Inc()
		r.changes.Requeue(keys)
		r.changes.RequestFull()
		return fmt.Errorf("reconcile ipcache: %w", err)
	}
	curHosts, err := dpmaps.Dump[dpmaps.IPCacheKey, dpmaps.IPCacheValue](r.cfg.Map.HostsMap())
	if err != nil {
		return fail(err)
	}
	curTrie, err := dpmaps.Dump[dpmaps.IPCacheKey, dpmaps.IPCacheValue](r.cfg.Map.Map())
	if err != nil {
		return fail(err)
	}
	var d ipcacheDiff
	var bad []error
	unchanged, n := 0, 0
	r.cfg.State.AllIPCache(func(p netip.Prefix, e state.IPCacheEntry) {
		k, err := dpmaps.IPCacheKeyOf(p)
		if err != nil {
			bad = append(bad, err)
			return
		}
		n++
		cur := curTrie
		if k.IsHost() {
			cur = curHosts
		}
		v := ipcacheValue(e)
		if old, ok := cur[k]; ok && old == v {
			unchanged++
		} else {
			d.write(k, v)
		}
		delete(cur, k)
	})
	for _, cur := range []map[dpmaps.IPCacheKey]dpmaps.IPCacheValue{curHosts, curTrie} {
		for k := range cur {
			d.delete(k)
		}
	}
	err = d.apply(r.cfg.Map)
	now := time.Now()
	r.setEntries()
	r.trie.observePass(true, started)
	w, dl := d.counts()
	r.logger.Info("Reconciled the whole ipcache", logfields.Count, n, "written", w, "deleted", dl, "unchanged", unchanged, logfields.Duration, time.Since(started))
	if err != nil {
		return fail(err)
	}
	r.observe(keys, now)
	if len(bad) > 0 {
		r.logger.Warn("Skipped ipcache entries the map cannot hold", logfields.Error, errors.Join(bad...))
	}
	return nil
}
