package meshpolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-mesh/isthmus/agent/policy"
	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Defaults of Config's timing.
const (
	DefaultDebounce       = 10 * time.Millisecond
	DefaultResyncInterval = 5 * time.Minute
	DefaultRetryInterval  = 5 * time.Second
)

// Config configures a Reconciler.
type Config struct {
	// Cluster is the local cluster's name. Required.
	Cluster string
	// Client reads the local cluster's MeshNetworkPolicies. Required.
	Client *client.Clientset
	// Namespace limits the policies watched to one namespace. Empty means
	// all (what a node agent does); tests that share an apiserver scope it.
	Namespace string
	// State is the merged mesh state, whose identities and ipcache feed
	// the compiler. Its NodeName must be this node's, or no identity is
	// on this node. Required.
	State *state.State
	// Maps are the pinned maps the policy, enforcement and config go to.
	// Required.
	Maps *dpmaps.Maps
	// DefaultDeny is the mesh-wide default deny
	// (dpmaps.MeshSettings.DefaultDeny), written when the Reconciler is
	// created: endpoints no policy selects then pass no cross-cluster
	// traffic.
	DefaultDeny bool
	// Debounce is how long the Reconciler waits after a change for more
	// before it writes. Zero means DefaultDebounce.
	Debounce time.Duration
	// ResyncInterval is the period of full reconciles. Zero means
	// DefaultResyncInterval.
	ResyncInterval time.Duration
	// RetryInterval is the wait before a failed write is retried (as a
	// full reconcile). Zero means DefaultRetryInterval.
	RetryInterval time.Duration
	// Registry receives the metrics. Nil means none.
	Registry prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.Debounce == 0 {
		c.Debounce = DefaultDebounce
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = DefaultResyncInterval
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = DefaultRetryInterval
	}
}

// Reconciler keeps the node's policy and enforcement maps equal to the
// compiled MeshNetworkPolicies. Run does the work; the other methods are
// safe for concurrent use, and PolicyForRule and Stats also on a nil
// Reconciler (policy disabled).
type Reconciler struct {
	logger   *slog.Logger
	cfg      Config
	compiler *policy.Compiler
	informer client.MeshNetworkPolicyInformer
	metrics  *metrics

	identities *state.Changes[protocol.NumericIdentity]
	ipcache    *state.Changes[netip.Prefix]
	// wake carries policy events and AllowPrune to Run; capacity 1.
	wake chan struct{}

	pruneAllowed atomic.Bool
	needFull     atomic.Bool  // the next write is a full reconcile
	wrote        atomic.Bool  // the maps were reconciled at least once
	nodeCount    atomic.Int64 // identities with pods on this node, for Stats

	// Owned by Run.
	loaded bool // the state's identities and ipcache were read once whole
	node   *nodeIdentities
}

// New returns a Reconciler subscribed to cfg.State, and writes
// cfg.DefaultDeny into the mesh config. It reads no policy until Run.
func New(logger *slog.Logger, cfg Config) (*Reconciler, error) {
	if cfg.Client == nil || cfg.State == nil || cfg.Maps == nil {
		return nil, errors.New("meshpolicy: Config.Client, State and Maps are required")
	}
	cfg.setDefaults()
	c, err := policy.New(policy.Config{Cluster: cfg.Cluster, NodeScoped: true})
	if err != nil {
		return nil, err
	}
	r := &Reconciler{
		logger:     logger.With(logfields.Component, "policy"),
		cfg:        cfg,
		compiler:   c,
		informer:   client.NewMeshNetworkPolicyInformer(cfg.Client, client.InformerOptions{Namespace: cfg.Namespace}),
		identities: cfg.State.SubscribeIdentities(),
		ipcache:    cfg.State.SubscribeIPCache(),
		wake:       make(chan struct{}, 1),
		node:       newNodeIdentities(cfg.Cluster),
	}
	r.needFull.Store(true)
	r.metrics = newMetrics(cfg.Registry, r.statsSnapshot)
	if err := r.setDefaultDeny(); err != nil {
		return nil, err
	}
	_, err = r.informer.AddTypedEventHandler(cache.TypedResourceEventHandlerFuncs[*v1alpha1.MeshNetworkPolicy]{
		AddFunc:    func(p *v1alpha1.MeshNetworkPolicy) { r.upsertPolicy(p, true) },
		UpdateFunc: func(old, p *v1alpha1.MeshNetworkPolicy) { r.upsertPolicy(p, old.Generation != p.Generation) },
		// The key is all a deletion is sure to carry.
		DeleteFunc: func(d cache.DeletedObject[*v1alpha1.MeshNetworkPolicy]) {
			n := d.GetObjectName()
			started := time.Now()
			r.compiler.DeletePolicy(n.Namespace, n.Name)
			r.metrics.compileOf[compilePolicy].Observe(time.Since(started).Seconds())
			r.logger.Debug("MeshNetworkPolicy deleted", logfields.Policy, n.String())
			r.poke()
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watch MeshNetworkPolicies: %w", err)
	}
	return r, nil
}

func (r *Reconciler) setDefaultDeny() error {
	var was bool
	if _, err := r.cfg.Maps.Config.Update(func(s *dpmaps.MeshSettings) {
		was = s.DefaultDeny
		s.DefaultDeny = r.cfg.DefaultDeny
	}); err != nil {
		return fmt.Errorf("set mesh-wide default deny: %w", err)
	}
	if was != r.cfg.DefaultDeny {
		r.logger.Info("Mesh-wide default deny changed", "defaultDeny", r.cfg.DefaultDeny)
		return r.bump()
	}
	return nil
}

// upsertPolicy compiles a policy from the informer. Invalid ones are
// logged when their generation is new: the mesh apiserver writes their
// status; the agent only fails closed.
func (r *Reconciler) upsertPolicy(p *v1alpha1.MeshNetworkPolicy, newGeneration bool) {
	started := time.Now()
	err := r.compiler.UpsertPolicy(p)
	r.metrics.compileOf[compilePolicy].Observe(time.Since(started).Seconds())
	ref := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}.String()
	switch {
	case err != nil && newGeneration:
		r.logger.Warn("MeshNetworkPolicy is invalid; it allows nothing and the endpoints it selects deny what it would restrict until it is fixed",
			logfields.Policy, ref, logfields.Generation, p.Generation, logfields.Error, err)
	case newGeneration:
		r.logger.Debug("MeshNetworkPolicy compiled", logfields.Policy, ref, logfields.Generation, p.Generation)
	}
	r.poke()
}

func (r *Reconciler) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// AllowPrune lets the Reconciler write: call it once the agent's initial
// sync is complete, so that the first write, a full reconcile, does not
// delete the entries of identities not read yet. Writing also waits for
// the policies to be listed.
func (r *Reconciler) AllowPrune() {
	r.pruneAllowed.Store(true)
	r.poke()
}

// ready reports whether the compiled state is complete enough to write.
func (r *Reconciler) ready() bool { return r.pruneAllowed.Load() && r.informer.HasSynced() }

// PolicyForRule names the MeshNetworkPolicy whose entries carry ruleID (a
// flow event's RuleID). False for 0, an unknown ID, or a nil Reconciler.
func (r *Reconciler) PolicyForRule(ruleID uint32) (types.NamespacedName, bool) {
	if r == nil || ruleID == 0 {
		return types.NamespacedName{}, false
	}
	return r.compiler.PolicyForRule(ruleID)
}

// FlowPolicies names the MeshNetworkPolicies behind a flow event's
// verdict: for a flow a policy entry allowed (its rule ID), that entry's
// policy; for a packet dropped because no entry allowed it (reason
// policy-no-match), the policies that put the local endpoint into default
// deny in the event's direction. None where no policy decided (an
// endpoint no policy selects, the mesh-wide default deny), for a policy
// gone since, or for a nil Reconciler.
func (r *Reconciler) FlowPolicies(ev tunnelpolicy.FlowEvent) []types.NamespacedName {
	if r == nil {
		return nil
	}
	if ev.RuleID != 0 {
		if ref, ok := r.compiler.PolicyForRule(ev.RuleID); ok {
			return []types.NamespacedName{ref}
		}
		return nil
	}
	if ev.Reason != tunnelpolicy.ReasonNoMatch {
		return nil
	}
	local := ev.DstIdentity
	if ev.Direction == dpmaps.Egress {
		local = ev.SrcIdentity
	}
	return r.compiler.PoliciesEnforcing(local, ev.Direction)
}

// Stats are the compiler's counts and the identities on this node.
type Stats struct {
	policy.Stats
	NodeIdentities int
	// Synced: the policies were listed and the maps written at least once.
	Synced bool
}

// Stats returns the current counts; the zero Stats for a nil Reconciler.
func (r *Reconciler) Stats() Stats {
	if r == nil {
		return Stats{}
	}
	return Stats{Stats: r.compiler.Stats(), NodeIdentities: int(r.nodeCount.Load()), Synced: r.wrote.Load()}
}

func (r *Reconciler) statsSnapshot() (statsSnapshot, bool) {
	st := r.Stats()
	return statsSnapshot{
		policies: st.Policies, invalid: st.InvalidPolicies,
		identities: st.Identities, nodeIdents: st.NodeIdentities,
		entries: st.Entries, enforced: st.EnforcedIdentities,
		maxEntries:    r.cfg.Maps.Policy.Map().MaxEntries(),
		maxEnforcment: r.cfg.Maps.Enforcement.Map().MaxEntries(),
	}, true
}

// Run watches the policies and keeps the maps current until ctx is done.
func (r *Reconciler) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { r.informer.RunWithContext(ctx) })
	wg.Go(func() { r.waitListed(ctx) })

	resync := time.NewTicker(r.cfg.ResyncInterval)
	defer resync.Stop()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-resync.C:
			r.needFull.Store(true)
		case <-retry:
			retry = nil
		case <-r.wake:
		case <-r.identities.Notify():
		case <-r.ipcache.Notify():
		}
		debounce := time.NewTimer(r.cfg.Debounce)
		select {
		case <-ctx.Done():
			debounce.Stop()
			return
		case <-debounce.C:
		}
		if err := r.pass(); err != nil {
			r.metrics.writeErrors.Inc()
			r.needFull.Store(true)
			r.logger.Error("Writing the policy maps failed; reconciling them whole after a pause", logfields.Error, err, logfields.Duration, r.cfg.RetryInterval)
			retry = time.After(r.cfg.RetryInterval)
		}
	}
}

// listWarning is how long the policies may stay unlisted before the
// Reconciler says so.
const listWarning = time.Minute

// waitListed wakes Run once the policies are listed (there may be no
// event if there are none), and says so while they are not.
func (r *Reconciler) waitListed(ctx context.Context) {
	warn := time.NewTicker(listWarning)
	defer warn.Stop()
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for !r.informer.HasSynced() {
		select {
		case <-ctx.Done():
			return
		case <-warn.C:
			r.logger.Warn("MeshNetworkPolicies are not listed yet, so the policy maps keep what they hold; is the CRD installed (isthmus enable)?")
		case <-poll.C:
		}
	}
	r.logger.Info("MeshNetworkPolicies listed")
	r.poke()
}

// pass brings the compiler up to date with the state, and the maps with
// the compiler once writing is allowed.
func (r *Reconciler) pass() error {
	first := !r.loaded
	r.absorbIdentities(first)
	r.absorbNode(first)
	r.loaded = true
	if !r.ready() {
		return nil
	}
	if r.needFull.Load() {
		return r.fullSync()
	}
	started := time.Now()
	ch := r.compiler.TakeChanges()
	if ch.Empty() {
		return nil
	}
	err := ch.Apply(r.cfg.Maps.Policy, r.cfg.Maps.Enforcement)
	r.metrics.incremental.Observe(time.Since(started).Seconds())
	if err != nil {
		return fmt.Errorf("write %d policy entries, delete %d, set enforcement of %d identities: %w", len(ch.Upserts), len(ch.Deletes), len(ch.Enforcement), err)
	}
	r.logger.Debug("Wrote policy changes", "upserts", len(ch.Upserts), "deletes", len(ch.Deletes), "enforcement", len(ch.Enforcement), logfields.Duration, time.Since(started))
	return r.bump()
}

// absorbIdentities feeds the identities that changed in the state into the
// compiler; the first time, every identity.
func (r *Reconciler) absorbIdentities(all bool) {
	started := time.Now()
	keys, _ := r.identities.Take(0)
	if all {
		n := 0
		r.cfg.State.Identities(func(_ string, id protocol.NumericIdentity, labels protocol.Labels) {
			r.compiler.UpsertIdentity(id, labels)
			n++
		})
		r.logger.Debug("Compiled against every identity", logfields.Count, n, logfields.Duration, time.Since(started))
	} else {
		if len(keys) == 0 {
			return
		}
		for id := range keys {
			if labels, ok := r.cfg.State.Identity(id); ok {
				r.compiler.UpsertIdentity(id, labels)
			} else {
				r.compiler.DeleteIdentity(id)
			}
		}
	}
	r.metrics.compileOf[compileIdentities].Observe(time.Since(started).Seconds())
}

// nodeChunk bounds the ipcache keys resolved under one read lock of the
// state, so that a burst (an initial sync of 250k pods) neither holds the
// lock long nor builds large buffers.
const nodeChunk = 8192

// absorbNode follows the local pods hosted on this node; the first time,
// through the whole ipcache.
func (r *Reconciler) absorbNode(all bool) {
	started := time.Now()
	mark := func(id protocol.NumericIdentity, on bool) { r.compiler.SetNodeIdentity(id, on) }
	type change struct {
		p  netip.Prefix
		e  state.IPCacheEntry
		ok bool
	}
	var changes []change
	apply := func() {
		for _, c := range changes {
			r.node.update(c.p, c.e, c.ok, mark)
		}
		changes = changes[:0]
	}
	// The callbacks run under the state's lock: record, then compile.
	if all {
		r.ipcache.Take(0)
		r.cfg.State.AllIPCache(func(p netip.Prefix, e state.IPCacheEntry) {
			if r.node.onNode(e, true) {
				changes = append(changes, change{p, e, true})
			}
		})
		apply()
	} else {
		seen := 0
		for {
			keys, _ := r.ipcache.Take(nodeChunk)
			seen += len(keys)
			r.cfg.State.ResolveIPCache(maps.Keys(keys), func(p netip.Prefix, e state.IPCacheEntry, ok bool) {
				changes = append(changes, change{p, e, ok})
			})
			apply()
			if len(keys) < nodeChunk {
				break
			}
		}
		if seen == 0 {
			return
		}
	}
	r.nodeCount.Store(int64(r.node.identities()))
	r.metrics.compileOf[compileNode].Observe(time.Since(started).Seconds())
}

// fullSync makes the maps hold exactly the compiler's snapshot, writing
// only the differences, in Apply's order.
func (r *Reconciler) fullSync() error {
	started := time.Now()
	entries, enforced := r.compiler.Snapshot()
	r.needFull.Store(false)
	cur, err := r.cfg.Maps.Policy.Dump()
	if err != nil {
		return err
	}
	curEnf, err := dpmaps.Dump[uint32, dpmaps.PolicyEnforcement](r.cfg.Maps.Enforcement.Map())
	if err != nil {
		return err
	}
	ch := policy.Changes{
		Upserts:     make(map[dpmaps.PolicyEntryKey]dpmaps.PolicyEntry),
		Enforcement: make(map[protocol.NumericIdentity]dpmaps.Enforced),
	}
	for k, v := range entries {
		if old, ok := cur[k]; !ok || old != v {
			ch.Upserts[k] = v
		}
		delete(cur, k)
	}
	for k := range cur {
		ch.Deletes = append(ch.Deletes, k)
	}
	for id, en := range enforced {
		raw := curEnf[uint32(id)]
		if (dpmaps.Enforced{Ingress: raw.Ingress != 0, Egress: raw.Egress != 0}) != en {
			ch.Enforcement[id] = en
		}
		delete(curEnf, uint32(id))
	}
	for id := range curEnf {
		ch.Enforcement[protocol.NumericIdentity(id)] = dpmaps.Enforced{}
	}
	if ch.Empty() {
		r.wrote.Store(true)
		r.metrics.full.Observe(time.Since(started).Seconds())
		r.logger.Debug("Policy maps are current", "entries", len(entries), "enforced", len(enforced))
		return nil
	}
	err = ch.Apply(r.cfg.Maps.Policy, r.cfg.Maps.Enforcement)
	r.metrics.full.Observe(time.Since(started).Seconds())
	r.logger.Info("Reconciled the policy maps", "entries", len(entries), "enforced", len(enforced),
		"written", len(ch.Upserts), "deleted", len(ch.Deletes), "enforcementChanged", len(ch.Enforcement), logfields.Duration, time.Since(started))
	if err != nil {
		return fmt.Errorf("reconcile the policy maps: %w", err)
	}
	r.wrote.Store(true)
	return r.bump()
}

// bump makes the datapath check tracked flows against the new policy.
func (r *Reconciler) bump() error {
	rev, err := r.cfg.Maps.Config.BumpPolicyRevision()
	if err != nil {
		return fmt.Errorf("bump the policy revision: %w", err)
	}
	r.metrics.revisions.Inc()
	r.logger.Debug("Bumped the policy revision", logfields.Revision, rev)
	return nil
}
