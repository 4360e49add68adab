package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"

	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// ServiceConfig configures a ServiceReconciler.
type ServiceConfig struct {
	LoopConfig
	// State is the merged state to program. Required.
	State *state.State
	// Maps holds the service maps. Required.
	Maps *dpmaps.Maps
	// Metrics, shared by all reconcilers. Nil means none.
	Metrics *Metrics
}

// ServiceReconciler keeps the global service maps equal to the state's
// global services. Run does the work; the other methods are safe for
// concurrent use.
type ServiceReconciler struct {
	logger  *slog.Logger
	cfg     ServiceConfig
	changes *state.Changes[state.ServiceName]
	loop    loop
	metrics struct{ frontends, slots, backends *mapMetrics }

	mu sync.Mutex // guards the fields below
	// written is what this process programmed per global service.
	written map[state.ServiceName][]dpmaps.Service
	counts  ServiceCounts
	// pinned is the backends the maps held when the reconciler started,
	// by frontend, until pruning is allowed: a service written before
	// every cluster is read again keeps them (see pass).
	pinned map[dpmaps.Frontend][]dpmaps.Backend
}

// ServiceCounts counts the entries this process programmed per map.
type ServiceCounts struct{ Frontends, Slots, Backends int }

// NewServices returns a ServiceReconciler subscribed to cfg.State.
func NewServices(logger *slog.Logger, cfg ServiceConfig) (*ServiceReconciler, error) {
	if cfg.State == nil || cfg.Maps == nil {
		return nil, errors.New("reconcilers: ServiceConfig.State and Maps are required")
	}
	cfg.setDefaults()
	r := &ServiceReconciler{
		logger:  logger.With(logfields.Map, dpmaps.NameFrontends),
		cfg:     cfg,
		changes: cfg.State.SubscribeServices(),
		written: make(map[state.ServiceName][]dpmaps.Service),
	}
	if svcs, err := cfg.Maps.Services.Dump(); err != nil {
		r.logger.Warn("Cannot read the pinned services; a restart may briefly serve services with fewer backends", logfields.Error, err)
	} else {
		r.pinned = make(map[dpmaps.Frontend][]dpmaps.Backend, len(svcs))
		for _, svc := range svcs {
			r.pinned[svc.Frontend] = svc.Backends
		}
	}
	r.metrics.frontends = cfg.Metrics.forMap(dpmaps.NameFrontends, cfg.Maps.Map(dpmaps.NameFrontends).MaxEntries())
	r.metrics.slots = cfg.Metrics.forMap(dpmaps.NameSlots, cfg.Maps.Map(dpmaps.NameSlots).MaxEntries())
	r.metrics.backends = cfg.Metrics.forMap(dpmaps.NameBackends, cfg.Maps.Map(dpmaps.NameBackends).MaxEntries())
	r.loop = loop{logger: r.logger, cfg: cfg.LoopConfig, notify: r.changes.Notify(), requestFull: r.changes.RequestFull, pass: r.pass}
	return r, nil
}

// Run reconciles until ctx is done.
func (r *ServiceReconciler) Run(ctx context.Context) { r.loop.run(ctx) }

// AllowPrune enables full passes, which remove services the state does not
// hold, and runs one. Call it once the initial state is complete.
func (r *ServiceReconciler) AllowPrune() { r.loop.allowPrune() }

// Programmed returns what this process programmed for nn.
func (r *ServiceReconciler) Programmed(nn state.ServiceName) []dpmaps.Service {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.written[nn]
}

// Counts returns the entries programmed per map.
func (r *ServiceReconciler) Counts() ServiceCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts
}

var affinities = map[string]dpmaps.Affinity{
	meshconfig.AffinityNone:   dpmaps.AffinityNone,
	meshconfig.AffinityLocal:  dpmaps.AffinityLocal,
	meshconfig.AffinityRemote: dpmaps.AffinityRemote,
}

// datapathServices converts desired services to the map form. The socket
// load balancer serves TCP and UDP; other protocols are left out.
func datapathServices(desired []state.DesiredService) []dpmaps.Service {
	out := make([]dpmaps.Service, 0, len(desired))
	for _, d := range desired {
		var proto dpmaps.Protocol
		switch d.Frontend.Protocol {
		case protocol.ProtoTCP:
			proto = dpmaps.ProtoTCP
		case protocol.ProtoUDP:
			proto = dpmaps.ProtoUDP
		default:
			continue
		}
		svc := dpmaps.Service{
			Frontend: dpmaps.Frontend{Addr: d.Frontend.Addr, Port: d.Frontend.Port, Protocol: proto},
			Affinity: affinities[d.Affinity],
			Backends: make([]dpmaps.Backend, 0, len(d.Backends)),
		}
		for _, b := range d.Backends {
			svc.Backends = append(svc.Backends, dpmaps.Backend{Addr: b.Addr, Port: b.Port, ClusterID: uint16(b.ClusterID), Local: b.Local})
		}
		out = append(out, svc)
	}
	return out
}

func (r *ServiceReconciler) pass(ctx context.Context) error {
	keys, full := r.changes.Take(0)
	if full && r.loop.pruneAllowed.Load() {
		return r.fullPass(keys)
	}
	if len(keys) == 0 {
		return nil
	}
	started := time.Now()
	var errs []error
	failed := make(map[state.ServiceName]state.Stamp)
	pinned := r.pinnedUntilPrune()
	for nn, t := range keys {
		want := datapathServices(r.cfg.State.Service(nn))
		// Before every cluster is read again, a service's backends in the
		// state may be only some of them (the local ones, say, while the
		// remote clusters are still syncing): keep those the maps had, so
		// that a restarting agent does not leave a service without
		// backends. The full pass after the initial sync drops the stale.
		for i := range want {
			want[i].Backends = withBackends(want[i].Backends, pinned[want[i].Frontend])
		}
		if err := r.apply(nn, want); err != nil {
			errs = append(errs, err)
			failed[nn] = t
		}
	}
	now := time.Now()
	r.updateMetrics()
	r.metrics.frontends.observePass(false, started)
	for nn, s := range keys {
		if _, bad := failed[nn]; !bad {
			r.metrics.frontends.propagation.Observe(r.changes.Age(s, now).Seconds())
		}
	}
	if len(errs) > 0 {
		r.metrics.frontends.writeErrors.Inc()
		r.changes.Requeue(failed)
		return fmt.Errorf("program %d of %d global services: %w", len(failed), len(keys), errors.Join(errs...))
	}
	return nil
}

// pinnedUntilPrune returns the backends pinned at start while pruning is
// not allowed yet, and forgets them once it is.
func (r *ServiceReconciler) pinnedUntilPrune() map[dpmaps.Frontend][]dpmaps.Backend {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.loop.pruneAllowed.Load() {
		r.pinned = nil
	}
	return r.pinned
}

// withBackends adds to backends those of extra it does not have.
func withBackends(backends, extra []dpmaps.Backend) []dpmaps.Backend {
	if len(extra) == 0 {
		return backends
	}
	have := make(map[dpmaps.Backend]bool, len(backends))
	for _, b := range backends {
		have[b] = true
	}
	for _, b := range extra {
		if !have[b] {
			backends = append(backends, b)
			have[b] = true
		}
	}
	return backends
}

// apply programs one global service and removes frontends it no longer
// has.
func (r *ServiceReconciler) apply(nn state.ServiceName, want []dpmaps.Service) error {
	r.mu.Lock()
	old := r.written[nn]
	r.mu.Unlock()
	keep := make(map[dpmaps.Frontend]bool, len(want))
	var errs []error
	var done []dpmaps.Service
	for _, svc := range want {
		keep[svc.Frontend] = true
		if err := r.cfg.Maps.Services.Upsert(svc); err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", nn, err))
			continue
		}
		done = append(done, svc)
	}
	for _, svc := range old {
		if keep[svc.Frontend] {
			continue
		}
		if err := r.cfg.Maps.Services.Delete(svc.Frontend); err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", nn, err))
			done = append(done, svc) // still there
		}
	}
	r.mu.Lock()
	if len(done) == 0 {
		delete(r.written, nn)
	} else {
		r.written[nn] = done
	}
	r.mu.Unlock()
	return errors.Join(errs...)
}

// fullPass makes the service maps serve exactly the state's services.
func (r *ServiceReconciler) fullPass(keys map[state.ServiceName]state.Stamp) error {
	started := time.Now()
	written := make(map[state.ServiceName][]dpmaps.Service)
	var all []dpmaps.Service
	for _, nn := range r.cfg.State.LocalServiceNames() {
		svcs := datapathServices(r.cfg.State.Service(nn))
		if len(svcs) > 0 {
			written[nn] = svcs
			all = append(all, svcs...)
		}
	}
	st, err := r.cfg.Maps.Services.Reconcile(all)
	now := time.Now()
	r.mu.Lock()
	r.written = written
	r.mu.Unlock()
	r.updateMetrics()
	r.metrics.frontends.observePass(true, started)
	r.logger.Info("Reconciled every global service", logfields.Count, len(all),
		"frontendsChanged", st.Frontends.Changed(), "slotsChanged", st.Slots.Changed(), "backendsChanged", st.Backends.Changed(), "skipped", st.Skipped, logfields.Duration, time.Since(started))
	var invalid *dpmaps.InvalidEntriesError
	if errors.As(err, &invalid) && st.Frontends.Failed+st.Slots.Failed+st.Backends.Failed == 0 {
		// Services the datapath cannot serve; retrying will not help.
		r.logger.Warn("Skipped global services the datapath cannot serve", logfields.Error, err)
		err = nil
	}
	if err != nil {
		r.metrics.frontends.writeErrors.Inc()
		r.changes.Requeue(keys)
		r.changes.RequestFull()
		return fmt.Errorf("reconcile service maps: %w", err)
	}
	for _, s := range keys {
		r.metrics.frontends.propagation.Observe(r.changes.Age(s, now).Seconds())
	}
	return nil
}

// updateMetrics sets the entry counts from what was programmed.
func (r *ServiceReconciler) updateMetrics() {
	type backend struct {
		addr    netip.Addr
		port    uint16
		cluster uint16
	}
	r.mu.Lock()
	frontends, slots := 0, 0
	backends := make(map[backend]struct{})
	for _, svcs := range r.written {
		for _, svc := range svcs {
			frontends++
			slots += len(svc.Backends)
			for _, b := range svc.Backends {
				backends[backend{b.Addr, b.Port, b.ClusterID}] = struct{}{}
			}
		}
	}
	r.counts = ServiceCounts{frontends, slots, len(backends)}
	r.mu.Unlock()
	r.metrics.frontends.setEntries(frontends)
	r.metrics.slots.setEntries(slots)
	r.metrics.backends.setEntries(len(backends))
}
