package remotecluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// session is one connection's work: cluster-config check, list, watch.
// Not safe for concurrent use; it runs on the RemoteCluster's Run goroutine.
type session struct {
	rc     *RemoteCluster
	client *clientv3.Client
	bo     *backoff

	config    protocol.ClusterConfig
	configRaw []byte
	prefixes  [numKinds]string
	// wctx carries every watch of the session, so that they share one
	// gRPC stream and a progress request reaches all of them.
	wctx context.Context

	synced [numKinds]bool
	// pendingRev is the revision of a synced canary that appeared while
	// watching; the kind is synced once its watch reaches it. 0 if none.
	pendingRev [numKinds]int64
	// seenRev is the revision up to which the kind's events are applied.
	seenRev [numKinds]int64
	// noStream is set once the server turned out not to support
	// RangeStream (etcd before 3.7).
	noStream bool
}

func (s *session) run(ctx context.Context) error {
	rc := s.rc
	for i, k := range protocol.Kinds {
		s.prefixes[i] = protocol.WatchPrefix(rc.name, k)
	}
	if err := s.checkClusterConfig(ctx); err != nil {
		return err
	}
	rc.mu.Lock()
	rc.status.Connections++
	rc.mu.Unlock()
	rc.metrics.connections.Inc()
	rc.setState(StateSyncing)
	rc.logger.Info("Connected to cluster; listing its state", logfields.ClusterID, s.config.ID)

	// Each kind is listed at its own revision and watched from there, so
	// a compaction during one long list costs a relist of that kind only.
	for i := range protocol.Kinds {
		rev, err := s.list(ctx, i)
		if err != nil {
			return err
		}
		s.seenRev[i] = rev
	}
	rev, err := s.checkCanaries(ctx)
	if err != nil {
		return err
	}
	return s.watch(ctx, rev+1)
}

// checkClusterConfig reads and validates the cluster-config and claims the
// cluster ID.
func (s *session) checkClusterConfig(ctx context.Context) error {
	rc := s.rc
	key := protocol.ClusterConfigKey(rc.name)
	// The first request of a connection also waits for the connection
	// itself, so it is bounded by the dial timeout: an unreachable remote
	// or a rejected certificate is reported quickly.
	tctx, cancel := context.WithTimeout(ctx, rc.cfg.DialTimeout)
	resp, err := s.client.Get(tctx, key)
	cancel()
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		// Not ready yet; keep whatever state an earlier connection
		// delivered until a later one can sweep it.
		return fmt.Errorf("%s is missing: the cluster's mesh apiserver has not published its cluster-config yet, or the entry points at another cluster's etcd", key)
	}
	value := resp.Kvs[0].Value
	cfg, err := protocol.DecodeClusterConfig(rc.name, value)
	if err != nil {
		return s.refuse(0, err)
	}
	if m := cfg.Capabilities.MaxConnectedClusters; m != rc.cfg.MaxConnectedClusters {
		return s.refuse(cfg.ID, fmt.Errorf("cluster %q runs with maxConnectedClusters %d but this agent with %d; every cluster of a mesh must use the same value", rc.name, m, rc.cfg.MaxConnectedClusters))
	}
	if err := rc.cfg.ClusterIDs.Claim(rc.name, cfg.ID); err != nil {
		return s.refuse(cfg.ID, err)
	}
	s.config = cfg
	s.configRaw = bytes.Clone(value)
	rc.mu.Lock()
	rc.status.ClusterID = cfg.ID
	rc.mu.Unlock()
	return nil
}

// refuse withdraws everything the cluster delivered, since a cluster whose
// config conflicts with the mesh cannot be trusted, and reports why.
func (s *session) refuse(announcedID uint32, err error) error {
	rc := s.rc
	rc.cfg.ClusterIDs.Release(rc.name)
	for _, k := range protocol.Kinds {
		rc.cfg.Handler.Resync(k)
		if rc.cfg.Handler.Sweep(k) > 0 {
			s.publish(true)
		}
	}
	rc.mu.Lock()
	rc.status.ClusterID = announcedID
	rc.mu.Unlock()
	rc.setState(StateRefused)
	rc.logger.Error("Refusing cluster", logfields.Error, err)
	return fmt.Errorf("%w: %w", errRefused, err)
}

// checkCanaries reads the synced canaries and the cluster-config at the
// current revision, after every kind was listed, and returns that revision,
// from which the small watches start. A kind whose canary was written at or
// before its list is synced now; one whose canary is newer waits until its
// watch has caught up with the canary.
func (s *session) checkCanaries(ctx context.Context) (int64, error) {
	rc := s.rc
	tctx, cancel := context.WithTimeout(ctx, rc.cfg.RequestTimeout)
	defer cancel()
	resp, err := s.client.Get(tctx, protocol.SyncedPrefix+rc.name+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("list synced canaries: %w", err)
	}
	rev := resp.Header.Revision
	cresp, err := s.client.Get(tctx, protocol.ClusterConfigKey(rc.name), clientv3.WithRev(rev))
	if err != nil {
		return 0, fmt.Errorf("read cluster-config: %w", err)
	}
	if len(cresp.Kvs) == 0 || !bytes.Equal(cresp.Kvs[0].Value, s.configRaw) {
		return 0, errors.New("cluster-config changed while listing; reconnecting to check it again")
	}
	for _, kv := range resp.Kvs {
		if i, ok := s.canaryKind(kv.Key); ok {
			s.canaryAt(i, kv.ModRevision)
		}
	}
	for i := range protocol.Kinds {
		if !s.config.Capabilities.SyncedCanaries {
			s.markSynced(i)
		}
	}
	return rev, nil
}

// canaryAt records that kind i's synced canary was written at rev.
func (s *session) canaryAt(i int, rev int64) {
	if s.synced[i] || s.pendingRev[i] != 0 {
		return
	}
	s.pendingRev[i] = rev
	s.checkPending(i)
}

func (s *session) canaryKind(key []byte) (int, bool) {
	for i, k := range protocol.Kinds {
		if string(key) == protocol.SyncedKey(s.rc.name, k) {
			return i, true
		}
	}
	return 0, false
}

// list reads every key of kind i at the current revision, in pages,
// delivers them, and then sweeps the keys the listing did not contain. It
// returns the revision it listed at. A list whose revision is compacted
// away before its last page starts over.
func (s *session) list(ctx context.Context, i int) (int64, error) {
	for attempt := 1; ; attempt++ {
		rev, err := s.listOnce(ctx, i)
		if errors.Is(err, rpctypes.ErrCompacted) && attempt < 5 {
			s.rc.logger.Info("List revision compacted; listing again", logfields.Prefix, s.prefixes[i])
			continue
		}
		return rev, err
	}
}

func (s *session) listOnce(ctx context.Context, i int) (int64, error) {
	rc := s.rc
	// Entries delivered before, by an earlier connection or an earlier
	// attempt, are swept unless this attempt delivers them again.
	rc.cfg.Handler.Resync(protocol.Kinds[i])
	started := time.Now()
	var rev int64
	var n int
	var err error
	if !s.noStream {
		rev, n, err = s.listStream(ctx, i)
		if status.Code(err) == codes.Unimplemented {
			// An etcd before 3.7 has no RangeStream: page instead.
			rc.logger.Debug("Server cannot stream ranges; listing in pages", logfields.Error, err)
			s.noStream = true
		}
	}
	if s.noStream {
		rev, n, err = s.listPaged(ctx, i)
	}
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", s.prefixes[i], err)
	}
	swept := rc.cfg.Handler.Sweep(protocol.Kinds[i])
	s.publish(swept > 0)
	rc.logger.Debug("Listed prefix", logfields.Prefix, s.prefixes[i], logfields.Revision, rev, logfields.Count, n, "swept", swept, logfields.Duration, time.Since(started))
	return rev, nil
}

// listStream reads kind i with one streamed range: the server sends
// chunks of about a request's size at one revision and never counts the
// whole range per chunk, which paged Gets must. It returns the revision and
// the number of keys.
func (s *session) listStream(ctx context.Context, i int) (int64, int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The stream may take long; what must not is the wait for one chunk.
	idle := time.AfterFunc(s.rc.cfg.RequestTimeout, cancel)
	defer idle.Stop()
	ch, err := s.client.GetStream(ctx, s.prefixes[i], clientv3.WithPrefix())
	if err != nil {
		return 0, 0, err
	}
	var rev int64
	n := 0
	for r := range ch {
		idle.Reset(s.rc.cfg.RequestTimeout)
		if err := r.Err(); err != nil {
			for range ch {
			}
			return 0, 0, err
		}
		for _, kv := range r.Kvs {
			s.put(i, kv.Key, kv.Value)
		}
		n += len(r.Kvs)
		s.publish(len(r.Kvs) > 0)
		if r.Header != nil {
			rev = r.Header.Revision
		}
	}
	if rev == 0 {
		return 0, 0, errors.New("range stream ended without its final chunk")
	}
	return rev, n, nil
}

// listPaged reads kind i in pages at one revision, for servers without
// RangeStream.
func (s *session) listPaged(ctx context.Context, i int) (int64, int, error) {
	rc := s.rc
	prefix := s.prefixes[i]
	end := clientv3.GetPrefixRangeEnd(prefix)
	start := prefix
	var rev int64
	n := 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(rc.cfg.ListPageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		tctx, cancel := context.WithTimeout(ctx, rc.cfg.RequestTimeout)
		resp, err := s.client.Get(tctx, start, opts...)
		cancel()
		if err != nil {
			return 0, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			s.put(i, kv.Key, kv.Value)
		}
		n += len(resp.Kvs)
		s.publish(len(resp.Kvs) > 0)
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, n, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// put decodes one value and delivers it. A value that cannot be decoded or
// fails validation is skipped, logged and counted; an earlier valid value
// of its key is withdrawn, since the cluster no longer publishes it.
func (s *session) put(i int, key, value []byte) {
	rc := s.rc
	full := string(key)
	if err := s.deliverPut(i, full, value); err != nil {
		rc.mu.Lock()
		rc.kinds[i].DecodeErrors++
		rc.mu.Unlock()
		rc.metrics.decodeErrors[i].Inc()
		rc.logger.Warn("Skipping invalid value", logfields.Kind, protocol.Kinds[i], logfields.Key, full, logfields.Error, err)
		s.deliverDelete(i, full)
	}
}

// deliverPut decodes a value of kind i and hands it to the Handler. Keys
// the protocol says to ignore are neither delivered nor an error.
func (s *session) deliverPut(i int, key string, value []byte) error {
	rc := s.rc
	h := rc.cfg.Handler
	switch protocol.Kinds[i] {
	case protocol.KindIdentities:
		id, ok, err := protocol.DecodeIdentity(rc.name, s.config.ID, rc.cfg.MaxConnectedClusters, key, value)
		if !ok || err != nil {
			return err
		}
		h.UpsertIdentity(id)
	case protocol.KindIPCache:
		e, err := protocol.DecodeIPCacheEntry(s.config.ID, rc.cfg.MaxConnectedClusters, key, value)
		if err != nil {
			return err
		}
		h.UpsertIPCache(e)
	case protocol.KindNodes:
		n, err := protocol.DecodeNode(rc.name, s.config.ID, key, value)
		if err != nil {
			return err
		}
		h.UpsertNode(n)
	case protocol.KindServices:
		svc, err := protocol.DecodeClusterService(rc.name, s.config.ID, key, value)
		if err != nil {
			return err
		}
		h.UpsertService(svc)
	}
	return nil
}

// deliverDelete hands the deletion of a key to the Handler. A key that
// does not parse was never delivered, so there is nothing to delete.
func (s *session) deliverDelete(i int, key string) {
	h := s.rc.cfg.Handler
	switch protocol.Kinds[i] {
	case protocol.KindIdentities:
		if id, ok, err := protocol.ParseIdentityKey(key); ok && err == nil {
			h.DeleteIdentity(id)
		}
	case protocol.KindIPCache:
		if addr, err := protocol.ParseIPCacheKey(key); err == nil {
			h.DeleteIPCache(addr.Unmap())
		}
	case protocol.KindNodes:
		if _, node, err := protocol.ParseNodeKey(key); err == nil {
			h.DeleteNode(node)
		}
	case protocol.KindServices:
		if _, ns, name, err := protocol.ParseServiceKey(key); err == nil {
			h.DeleteService(ns, name)
		}
	}
}

// publish records that entries changed.
func (s *session) publish(changed bool) {
	if !changed {
		return
	}
	rc := s.rc
	rc.mu.Lock()
	rc.status.LastChange = time.Now()
	rc.mu.Unlock()
}

func (s *session) markSynced(i int) {
	if s.synced[i] {
		return
	}
	rc := s.rc
	s.synced[i] = true
	s.pendingRev[i] = 0
	rc.cfg.Handler.Synced(protocol.Kinds[i])
	all := true
	for _, ok := range s.synced {
		all = all && ok
	}
	rc.mu.Lock()
	rc.kinds[i].Synced = true
	rc.mu.Unlock()
	if all {
		rc.setState(StateReady)
		s.bo.reset()
		rc.logger.Info("Cluster synced")
	}
}

// checkPending marks kind i synced once its watch has reached the revision
// of its synced canary.
func (s *session) checkPending(i int) {
	if r := s.pendingRev[i]; r != 0 && s.seenRev[i] >= r {
		s.markSynced(i)
	}
}

func (s *session) anyPending() bool {
	for _, r := range s.pendingRev {
		if r != 0 {
			return true
		}
	}
	return false
}

// watch follows every kind from the revision after its list, and the
// canaries, cluster-config and heartbeat from rev, until the connection fails, the
// heartbeat stops, the cluster-config changes, or ctx is done.
func (s *session) watch(ctx context.Context, rev int64) error {
	rc := s.rc
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	s.wctx = wctx
	var kindCh [numKinds]clientv3.WatchChan
	for i := range kindCh {
		kindCh[i] = s.client.Watch(wctx, s.prefixes[i], clientv3.WithPrefix(), clientv3.WithRev(s.seenRev[i]+1))
	}
	canaryCh := s.client.Watch(wctx, protocol.SyncedPrefix+rc.name+"/", clientv3.WithPrefix(), clientv3.WithRev(rev))
	configCh := s.client.Watch(wctx, protocol.ClusterConfigKey(rc.name), clientv3.WithRev(rev))
	heartbeatCh := s.client.Watch(wctx, protocol.HeartbeatKey, clientv3.WithRev(rev))

	heartbeat := time.NewTimer(rc.cfg.HeartbeatTimeout)
	defer heartbeat.Stop()
	// Progress requests are repeated while a canary waits, since the
	// server answers them only when every watcher has caught up.
	progress := time.NewTicker(time.Second)
	defer progress.Stop()

	for {
		var err error
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-heartbeat.C:
			return fmt.Errorf("%w: no heartbeat for %s, more than twice its interval", errHeartbeatTimeout, rc.cfg.HeartbeatTimeout)
		case <-progress.C:
			if s.anyPending() {
				err = s.requestProgress()
			}
		case r, ok := <-kindCh[0]:
			err = s.onKindResponse(ctx, &kindCh, 0, r, ok)
		case r, ok := <-kindCh[1]:
			err = s.onKindResponse(ctx, &kindCh, 1, r, ok)
		case r, ok := <-kindCh[2]:
			err = s.onKindResponse(ctx, &kindCh, 2, r, ok)
		case r, ok := <-kindCh[3]:
			err = s.onKindResponse(ctx, &kindCh, 3, r, ok)
		case r, ok := <-canaryCh:
			err = s.onCanaryResponse(r, ok)
		case r, ok := <-configCh:
			err = s.onConfigResponse(r, ok)
		case r, ok := <-heartbeatCh:
			err = s.onHeartbeatResponse(r, ok, heartbeat)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
}

func (s *session) requestProgress() error {
	if err := s.client.RequestProgress(s.wctx); err != nil {
		return fmt.Errorf("request watch progress: %w", err)
	}
	return nil
}

func (s *session) onKindResponse(ctx context.Context, chans *[numKinds]clientv3.WatchChan, i int, r clientv3.WatchResponse, ok bool) error {
	prefix := s.prefixes[i]
	if !ok {
		return fmt.Errorf("watch of %s closed", prefix)
	}
	if r.CompactRevision != 0 {
		// The watch fell behind a compaction: list again (sweeping what
		// went away meanwhile) and watch on from the new list.
		s.rc.logger.Info("Watch compacted; listing again", logfields.Prefix, prefix, logfields.Revision, r.CompactRevision)
		rev, err := s.list(ctx, i)
		if err != nil {
			return err
		}
		s.seenRev[i] = rev
		chans[i] = s.client.Watch(s.wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		s.checkPending(i)
		return nil
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("watch %s: %w", prefix, err)
	}
	for _, ev := range r.Events {
		switch ev.Type {
		case mvccpb.PUT:
			s.put(i, ev.Kv.Key, ev.Kv.Value)
		case mvccpb.DELETE:
			s.deliverDelete(i, string(ev.Kv.Key))
		}
	}
	s.seenRev[i] = max(s.seenRev[i], r.Header.Revision)
	s.publish(len(r.Events) > 0)
	s.checkPending(i)
	return nil
}

func (s *session) onCanaryResponse(r clientv3.WatchResponse, ok bool) error {
	if !ok {
		return errors.New("watch of synced canaries closed")
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("watch synced canaries: %w", err)
	}
	for _, ev := range r.Events {
		if ev.Type != mvccpb.PUT {
			continue
		}
		if i, ok := s.canaryKind(ev.Kv.Key); ok {
			s.canaryAt(i, ev.Kv.ModRevision)
		}
	}
	if s.anyPending() {
		return s.requestProgress()
	}
	return nil
}

func (s *session) onConfigResponse(r clientv3.WatchResponse, ok bool) error {
	if !ok {
		return errors.New("watch of cluster-config closed")
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("watch cluster-config: %w", err)
	}
	for _, ev := range r.Events {
		if ev.Type == mvccpb.DELETE {
			return errors.New("cluster-config deleted; reconnecting to check the cluster again")
		}
		if !bytes.Equal(ev.Kv.Value, s.configRaw) {
			return errors.New("cluster-config changed; reconnecting to check it again")
		}
	}
	return nil
}

func (s *session) onHeartbeatResponse(r clientv3.WatchResponse, ok bool, timer *time.Timer) error {
	if !ok {
		return errors.New("watch of heartbeat closed")
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("watch heartbeat: %w", err)
	}
	rc := s.rc
	for _, ev := range r.Events {
		if ev.Type != mvccpb.PUT {
			continue
		}
		// Any write proves the remote alive; the time it carries only
		// feeds the status and the delay metric.
		timer.Reset(rc.cfg.HeartbeatTimeout)
		if t, err := protocol.DecodeTimestamp(protocol.HeartbeatKey, ev.Kv.Value); err == nil {
			rc.metrics.heartbeatDelay.Set(time.Since(t).Seconds())
			rc.mu.Lock()
			rc.status.LastHeartbeat = t
			rc.mu.Unlock()
		}
	}
	return nil
}
