package remotecluster_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/isthmus-mesh/isthmus/agent/internal/meshtest"
	"github.com/isthmus-mesh/isthmus/agent/remotecluster"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

const waitTimeout = 60 * time.Second

// recorder is a Handler that keeps what it was given, encoded, so a test
// can compare it with what the remote holds; it sweeps by generation like
// the agent's state does.
type recorder struct {
	mu         sync.Mutex
	identities map[protocol.NumericIdentity]string
	ipcache    map[netip.Addr]string
	nodes      map[string]string
	services   map[string]string
	synced     map[protocol.Kind]int
	gen        map[protocol.Kind]int
	// seen maps each held entry to the generation it was last written in.
	seen map[protocol.Kind]map[any]int
	// block, when set, is called on every upsert (outside mu).
	block func()
}

func newRecorder() *recorder {
	r := &recorder{
		identities: map[protocol.NumericIdentity]string{},
		ipcache:    map[netip.Addr]string{},
		nodes:      map[string]string{},
		services:   map[string]string{},
		synced:     map[protocol.Kind]int{},
		gen:        map[protocol.Kind]int{},
		seen:       map[protocol.Kind]map[any]int{},
	}
	for _, k := range protocol.Kinds {
		r.seen[k] = map[any]int{}
	}
	return r
}

func (r *recorder) upsert(kind protocol.Kind, key any, f func()) {
	r.mu.Lock()
	f()
	r.seen[kind][key] = r.gen[kind]
	b := r.block
	r.mu.Unlock()
	if b != nil {
		b()
	}
}

func (r *recorder) remove(kind protocol.Kind, key any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removeLocked(kind, key)
}

func (r *recorder) removeLocked(kind protocol.Kind, key any) {
	delete(r.seen[kind], key)
	switch k := key.(type) {
	case protocol.NumericIdentity:
		delete(r.identities, k)
	case netip.Addr:
		delete(r.ipcache, k)
	case string:
		if kind == protocol.KindNodes {
			delete(r.nodes, k)
		} else {
			delete(r.services, k)
		}
	}
}

func (r *recorder) UpsertIdentity(i protocol.Identity) {
	r.upsert(protocol.KindIdentities, i.ID, func() { r.identities[i.ID] = string(i.Encode()) })
}
func (r *recorder) DeleteIdentity(id protocol.NumericIdentity) {
	r.remove(protocol.KindIdentities, id)
}
func (r *recorder) UpsertIPCache(e *protocol.IPCacheEntry) {
	r.upsert(protocol.KindIPCache, e.IP, func() { r.ipcache[e.IP] = string(e.Encode()) })
}
func (r *recorder) DeleteIPCache(a netip.Addr) { r.remove(protocol.KindIPCache, a) }
func (r *recorder) UpsertNode(n *protocol.Node) {
	r.upsert(protocol.KindNodes, n.Name, func() { r.nodes[n.Name] = string(n.Encode()) })
}
func (r *recorder) DeleteNode(name string) { r.remove(protocol.KindNodes, name) }
func (r *recorder) UpsertService(s *protocol.ClusterService) {
	r.upsert(protocol.KindServices, s.NamespacedName(), func() { r.services[s.NamespacedName()] = string(s.Encode()) })
}
func (r *recorder) DeleteService(ns, name string) {
	r.remove(protocol.KindServices, ns+"/"+name)
}
func (r *recorder) Resync(k protocol.Kind) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen[k]++
}
func (r *recorder) Sweep(k protocol.Kind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for key, g := range r.seen[k] {
		if g != r.gen[k] {
			r.removeLocked(k, key)
			n++
		}
	}
	return n
}
func (r *recorder) Synced(k protocol.Kind) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.synced[k]++
}

func (r *recorder) counts() [4]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return [4]int{len(r.nodes), len(r.services), len(r.identities), len(r.ipcache)}
}

// fixture publishes a known state into a cluster and remembers it.
type fixture struct {
	identities map[protocol.NumericIdentity]string
	ipcache    map[netip.Addr]string
	nodes      map[string]string
	services   map[string]string
}

func publish(c *meshtest.Cluster, n int) *fixture {
	f := &fixture{map[protocol.NumericIdentity]string{}, map[netip.Addr]string{}, map[string]string{}, map[string]string{}}
	var kvs []meshtest.KV
	for i := range n {
		id, kv := c.Identity(uint32(256+i), fmt.Sprintf("app%d", i))
		f.identities[id.ID] = string(kv.Value)
		kvs = append(kvs, kv)
		e, kv := c.IPCache(c.PodIP(i), uint32(256+i), c.HostIP(i%4))
		f.ipcache[e.IP] = string(kv.Value)
		kvs = append(kvs, kv)
	}
	for i := range 4 {
		node, kv := c.Node(c.NodeName(i), c.HostIP(i), netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(c.ID), byte(i), 0}), 24))
		f.nodes[node.Name] = string(kv.Value)
		kvs = append(kvs, kv)
	}
	for i := range 3 {
		s, kv := c.Service("test", fmt.Sprintf("svc%d", i), netip.AddrFrom4([4]byte{10, 96, byte(c.ID), byte(i)}), 80, 8080, c.PodIP(i))
		f.services[s.NamespacedName()] = string(kv.Value)
		kvs = append(kvs, kv)
	}
	c.PutAll(kvs)
	return f
}

func (f *fixture) matches(r *recorder) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case !maps.Equal(f.identities, r.identities):
		return fmt.Errorf("identities: have %d, want %d", len(r.identities), len(f.identities))
	case !maps.Equal(f.ipcache, r.ipcache):
		return fmt.Errorf("ipcache: have %d, want %d", len(r.ipcache), len(f.ipcache))
	case !maps.Equal(f.nodes, r.nodes):
		return fmt.Errorf("nodes: have %v, want %v", r.nodes, f.nodes)
	case !maps.Equal(f.services, r.services):
		return fmt.Errorf("services: have %d, want %d", len(r.services), len(f.services))
	}
	return nil
}

type reader struct {
	*remotecluster.RemoteCluster
	rec    *recorder
	cancel context.CancelFunc
	done   chan struct{}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startReader runs a reader of c as the remote user until the test ends.
func startReader(t *testing.T, c *meshtest.Cluster, ids *remotecluster.ClusterIDs, mod func(*remotecluster.Config)) *reader {
	t.Helper()
	rec := newRecorder()
	cfg := remotecluster.Config{
		Entry:                c.Entry(meshtest.RemoteUser),
		MaxConnectedClusters: protocol.MaxConnectedClusters255,
		ClusterIDs:           ids,
		Handler:              rec,
		HeartbeatTimeout:     10 * time.Second,
		DialTimeout:          2 * time.Second,
		MinBackoff:           20 * time.Millisecond,
		MaxBackoff:           200 * time.Millisecond,
		ListPageSize:         100,
	}
	if mod != nil {
		mod(&cfg)
	}
	rc, err := remotecluster.New(testLogger(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &reader{RemoteCluster: rc, rec: rec, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		rc.Run(ctx)
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *reader) stop() {
	r.cancel()
	<-r.done
}

func (r *reader) waitState(t *testing.T, want remotecluster.State) remotecluster.Status {
	t.Helper()
	var st remotecluster.Status
	meshtest.Eventually(t, waitTimeout, func() error {
		st = r.Status()
		if st.State != want {
			return fmt.Errorf("state %s (last error %q), want %s", st.State, st.LastError, want)
		}
		return nil
	})
	return st
}

func TestListsWatchesAndFollowsChanges(t *testing.T) {
	c := meshtest.StartCluster(t, "cluster1", 1)
	c.Heartbeat(100 * time.Millisecond)
	f := publish(c, 250) // more than a list page
	c.PutSynced()
	ids := remotecluster.NewClusterIDs("local", 9)
	r := startReader(t, c, ids, nil)
	st := r.waitState(t, remotecluster.StateReady)
	if err := f.matches(r.rec); err != nil {
		t.Fatalf("after sync: %v", err)
	}
	if st.ClusterID != 1 || r.rec.counts() != [4]int{4, 3, 250, 250} || !st.Kinds[protocol.KindServices].Synced {
		t.Errorf("status after sync: %+v", st)
	}
	if h, _ := ids.Holder(1); h != "cluster1" {
		t.Errorf("cluster ID 1 held by %q", h)
	}

	// Changes, additions and deletions arrive.
	e, kv := c.IPCache(c.PodIP(0), 300, c.HostIP(3))
	c.Put(kv.Key, kv.Value)
	f.ipcache[e.IP] = string(kv.Value)
	e, kv = c.IPCache(c.PodIP(1000), 301, c.HostIP(0))
	c.Put(kv.Key, kv.Value)
	f.ipcache[e.IP] = string(kv.Value)
	c.Delete(protocol.IPCacheKey(c.PodIP(1)))
	delete(f.ipcache, c.PodIP(1))
	c.Delete(protocol.NodeKey(c.Name, c.NodeName(2)))
	delete(f.nodes, c.NodeName(2))
	s, kv := c.Service("test", "svc0", netip.MustParseAddr("10.96.1.0"), 80, 8080, c.PodIP(5), c.PodIP(6))
	c.Put(kv.Key, kv.Value)
	f.services[s.NamespacedName()] = string(kv.Value)
	c.Delete(protocol.IdentityKey(protocol.ComposeIdentity(1, 256, 255)))
	delete(f.identities, protocol.ComposeIdentity(1, 256, 255))
	meshtest.Eventually(t, waitTimeout, func() error { return f.matches(r.rec) })

	// Keys the protocol says to ignore are neither delivered nor counted.
	c.Put(protocol.IdentitiesPrefix+"value/k8s:app=x;/1.2.3.4", []byte("257"))
	c.Put(protocol.IPCacheKey(c.PodIP(2000)), []byte("broken"))
	meshtest.Eventually(t, waitTimeout, func() error {
		if n := r.Status().Kinds[protocol.KindIPCache].DecodeErrors; n != 1 {
			return fmt.Errorf("ipcache decode errors %d", n)
		}
		return nil
	})
	if n := r.Status().Kinds[protocol.KindIdentities].DecodeErrors; n != 0 {
		t.Errorf("identity decode errors %d, want 0 (allocator keys are ignored)", n)
	}
	if err := f.matches(r.rec); err != nil {
		t.Error(err)
	}
}

// An etcd before 3.7 has no RangeStream; the reader lists in pages then.
func TestListsInPagesWithoutRangeStream(t *testing.T) {
	c := meshtest.StartCluster(t, "cluster1", 1)
	c.Heartbeat(100 * time.Millisecond)
	f := publish(c, 250)
	c.PutSynced()
	var streams atomic.Int32
	r := startReader(t, c, remotecluster.NewClusterIDs("local", 9), func(cfg *remotecluster.Config) {
		cfg.ListPageSize = 30
		cfg.NewClient = func(cc clientv3.Config) (*clientv3.Client, error) {
			cc.DialOptions = append(cc.DialOptions, grpc.WithChainStreamInterceptor(
				func(ctx context.Context, desc *grpc.StreamDesc, conn *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
					if strings.HasSuffix(method, "/RangeStream") {
						streams.Add(1)
						return nil, status.Error(codes.Unimplemented, "unknown method RangeStream for service etcdserverpb.KV")
					}
					return streamer(ctx, desc, conn, method, opts...)
				}))
			return clientv3.New(cc)
		}
	})
	r.waitState(t, remotecluster.StateReady)
	if err := f.matches(r.rec); err != nil {
		t.Fatal(err)
	}
	if n := streams.Load(); n != 1 {
		t.Errorf("RangeStream tried %d times, want once per connection", n)
	}
}

func TestSyncedWaitsForCanaries(t *testing.T) {
	c := meshtest.StartCluster(t, "cluster1", 1)
	c.Heartbeat(100 * time.Millisecond)
	f := publish(c, 10)
	c.PutSynced(protocol.KindNodes)
	r := startReader(t, c, remotecluster.NewClusterIDs("local", 9), nil)
	meshtest.Eventually(t, waitTimeout, func() error { return f.matches(r.rec) })
	meshtest.Eventually(t, waitTimeout, func() error {
		if !r.Status().Kinds[protocol.KindNodes].Synced {
			return errors.New("nodes not synced")
		}
		return nil
	})
	st := r.Status()
	if st.State != remotecluster.StateSyncing || st.Kinds[protocol.KindIPCache].Synced {
		t.Fatalf("kinds before canaries: %+v", st.Kinds)
	}
	// State written after the list but before the canary is part of the
	// initial state: it is there once the kind is synced.
	e, kv := c.IPCache(c.PodIP(500), 500, c.HostIP(0))
	c.Put(kv.Key, kv.Value)
	c.PutSynced(protocol.KindIPCache)
	meshtest.Eventually(t, waitTimeout, func() error {
		if !r.Status().Kinds[protocol.KindIPCache].Synced {
			return errors.New("ipcache not synced")
		}
		return nil
	})
	r.rec.mu.Lock()
	_, ok := r.rec.ipcache[e.IP]
	r.rec.mu.Unlock()
	if !ok {
		t.Error("ipcache synced without the entry written before its canary")
	}
	c.PutSynced()
	r.waitState(t, remotecluster.StateReady)
	r.rec.mu.Lock()
	defer r.rec.mu.Unlock()
	for _, k := range protocol.Kinds {
		if r.rec.synced[k] != 1 {
			t.Errorf("Synced(%s) called %d times", k, r.rec.synced[k])
		}
	}
}

func TestMalformedValuesAreSkippedAndCounted(t *testing.T) {
	c := meshtest.StartCluster(t, "cluster1", 1)
	c.Heartbeat(100 * time.Millisecond)
	f := publish(c, 1000)
	// 1,000 bad values spread over every kind and every way to be bad.
	bad := []func(i int) meshtest.KV{
		func(i int) meshtest.KV {
			return meshtest.KV{Key: protocol.IPCacheKey(c.PodIP(20000 + i)), Value: []byte("{not json")}
		},
		func(i int) meshtest.KV { // identity of another cluster
			e, kv := c.IPCache(c.PodIP(20000+i), 0, c.HostIP(0))
			e.ID = protocol.ComposeIdentity(2, 300, 255)
			return meshtest.KV{Key: kv.Key, Value: e.Encode()}
		},
		func(i int) meshtest.KV {
			return meshtest.KV{Key: protocol.IPCachePrefix + fmt.Sprintf("not-an-ip-%d", i), Value: []byte(`{}`)}
		},
		func(i int) meshtest.KV { // identity with the wrong cluster label
			id := protocol.ComposeIdentity(1, uint32(5000+i), 255)
			return meshtest.KV{Key: protocol.IdentityKey(id), Value: []byte("k8s:app=x;k8s:io.cilium.k8s.policy.cluster=other;")}
		},
		func(i int) meshtest.KV { // reserved identity
			return meshtest.KV{Key: protocol.IdentityIDPrefix + fmt.Sprint(i%255+1), Value: []byte("k8s:app=x;")}
		},
		func(i int) meshtest.KV { // node of another cluster in the value
			n, kv := c.Node(fmt.Sprintf("bad-%d", i), c.HostIP(0), netip.MustParsePrefix("10.1.0.0/24"))
			n.Cluster = "cluster2"
			return meshtest.KV{Key: kv.Key, Value: n.Encode()}
		},
		func(i int) meshtest.KV { // service with a bad backend
			s, kv := c.Service("test", fmt.Sprintf("bad-%d", i), netip.MustParseAddr("10.96.0.1"), 80, 8080)
			s.Backends["10.0.0.999"] = protocol.PortConfiguration{"http": {Protocol: protocol.ProtoTCP, Port: 1}}
			return meshtest.KV{Key: kv.Key, Value: s.Encode()}
		},
		func(i int) meshtest.KV {
			return meshtest.KV{Key: protocol.ServiceKey(c.Name, "test", fmt.Sprintf("trunc-%d", i)), Value: []byte(`{"cluster":"cluster1"`)}
		},
	}
	var kvs []meshtest.KV
	keys := map[string]bool{}
	for i := 0; len(keys) < 1000; i++ {
		kv := bad[i%len(bad)](i)
		if !keys[kv.Key] {
			keys[kv.Key] = true
			kvs = append(kvs, kv)
		}
	}
	c.PutAll(kvs)
	c.PutSynced()

	reg := prometheus.NewRegistry()
	m := remotecluster.NewMetrics(reg)
	r := startReader(t, c, remotecluster.NewClusterIDs("local", 9), func(cfg *remotecluster.Config) { cfg.Metrics = m })
	st := r.waitState(t, remotecluster.StateReady)
	if err := f.matches(r.rec); err != nil {
		t.Fatalf("valid values: %v", err)
	}
	var total uint64
	for _, k := range st.Kinds {
		total += k.DecodeErrors
	}
	if total != 1000 {
		t.Errorf("decode errors in status: %d, want 1000 (%+v)", total, st.Kinds)
	}
	if got := testutil.ToFloat64(metricSum(t, reg, "isthmus_agent_remote_decode_errors_total")); got != 1000 {
		t.Errorf("decode error metric sum %v, want 1000", got)
	}

	// A valid value replaced by a bad one is withdrawn, not kept stale.
	c.Put(protocol.IPCacheKey(c.PodIP(3)), []byte("garbage"))
	meshtest.Eventually(t, waitTimeout, func() error {
		r.rec.mu.Lock()
		defer r.rec.mu.Unlock()
		if _, ok := r.rec.ipcache[c.PodIP(3)]; ok {
			return errors.New("entry replaced by garbage still held")
		}
		return nil
	})
}

// metricSum returns a gauge holding the sum of a metric family's values.
func metricSum(t *testing.T, g prometheus.Gatherer, name string) prometheus.Gauge {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := prometheus.NewGauge(prometheus.GaugeOpts{Name: "sum"})
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum.Add(m.GetCounter().GetValue() + m.GetGauge().GetValue())
		}
	}
	return sum
}

func TestDuplicateClusterIDIsRefused(t *testing.T) {
	a := meshtest.StartCluster(t, "cluster-a", 3)
	b := meshtest.StartCluster(t, "cluster-b", 3)
	local := meshtest.StartCluster(t, "cluster-c", 7)
	for _, c := range []*meshtest.Cluster{a, b, local} {
		c.Heartbeat(100 * time.Millisecond)
		publish(c, 5)
		c.PutSynced()
	}
	// The agent runs in a cluster with ID 7.
	ids := remotecluster.NewClusterIDs("local", 7)
	reg := prometheus.NewRegistry()
	m := remotecluster.NewMetrics(reg)
	withMetrics := func(cfg *remotecluster.Config) { cfg.Metrics = m }
	ra := startReader(t, a, ids, withMetrics)
	ra.waitState(t, remotecluster.StateReady)
	rb := startReader(t, b, ids, withMetrics)
	st := rb.waitState(t, remotecluster.StateRefused)
	if !strings.Contains(st.LastError, `cluster ID 3`) || !strings.Contains(st.LastError, `"cluster-a"`) {
		t.Errorf("refusal does not say what conflicts: %q", st.LastError)
	}
	if n := rb.rec.counts(); n != [4]int{} {
		t.Errorf("refused cluster delivered state: %v", n)
	}
	if v := testutil.ToFloat64(stateMetric(t, reg, "cluster-b", "refused")); v != 1 {
		t.Errorf("refused state metric %v", v)
	}
	// A cluster with the local cluster's ID is refused too.
	rl := startReader(t, local, ids, withMetrics)
	st = rl.waitState(t, remotecluster.StateRefused)
	if !strings.Contains(st.LastError, "the local cluster") {
		t.Errorf("local conflict: %q", st.LastError)
	}
	// The first cluster is not disturbed; once a leaves, b gets its ID.
	if ra.Status().State != remotecluster.StateReady {
		t.Errorf("cluster-a: %s", ra.Status().State)
	}
	ra.stop()
	ids.Release("cluster-a")
	rb.waitState(t, remotecluster.StateReady)
	if n := rb.rec.counts(); n != [4]int{4, 3, 5, 5} {
		t.Errorf("cluster-b after accepting: %v", n)
	}
}

func stateMetric(t *testing.T, reg *prometheus.Registry, cluster, state string) prometheus.Gauge {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "v"})
	for _, f := range fams {
		if f.GetName() != "isthmus_agent_remote_cluster_state" {
			continue
		}
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["cluster"] == cluster && l["state"] == state {
				g.Set(m.GetGauge().GetValue())
			}
		}
	}
	return g
}

func TestMaxConnectedClustersMismatchIsRefused(t *testing.T) {
	c := meshtest.StartCluster(t, "cluster1", 1)
	c.MaxConnected = 511
	c.PutConfig()
	c.PutSynced()
	c.Heartbeat(100 * time.Millisecond)
	r := startReader(t, c, remotecluster.NewClusterIDs("local", 9), nil)
	st := r.waitState(t, remotecluster.StateRefused)
	if !strings.Contains(st.LastError, "maxConnectedClusters 511") {
		t.Errorf("refusal: %q", st.LastError)
	}
	// Fixing the remote is picked up by the retries.
	c.MaxConnected = 255
	c.PutConfig()
	r.waitState(t, remotecluster.StateReady)
}

func TestOwnClusterMustMatchLocalID(t *testing.T) {
	c := meshtest.StartCluster(t, "home", 4)
	c.Heartbeat(100 * time.Millisecond)
	c.PutSynced()
	r := startReader(t, c, remotecluster.NewClusterIDs("home", 5), nil)
	st := r.waitState(t, remotecluster.StateRefused)
	if !strings.Contains(st.LastError, "--cluster-id") {
		t.Errorf("refusal: %q", st.LastError)
	}
	// The agent reads its own cluster as the local user, through the
	// same code path.
	r2 := startReader(t, c, remotecluster.NewClusterIDs("home", 4), func(cfg *remotecluster.Config) {
		cfg.Entry = c.Entry(protocol.LocalUser("home"))
	})
	r2.waitState(t, remotecluster.StateReady)
}

func TestRemoteRestartSweepsStaleEntries(t *testing.T) {
	c := meshtest.StartCluster(t, "cluster1", 1)
	c.Heartbeat(50 * time.Millisecond)
	f := publish(c, 100)
	c.PutSynced()
	r := startReader(t, c, remotecluster.NewClusterIDs("local", 9), func(cfg *remotecluster.Config) {
		cfg.HeartbeatTimeout = time.Second
	})
	r.waitState(t, remotecluster.StateReady)
	if err := f.matches(r.rec); err != nil {
		t.Fatal(err)
	}

	// The remote loses all its state and comes back with less of it;
	// the reader reconnects while the config is still missing, and keeps
	// what it had until the remote is ready again.
	c.Stop()
	r.waitState(t, remotecluster.StateDisconnected)
	c.Start(true)
	if err := f.matches(r.rec); err != nil {
		t.Fatalf("state lost while the remote was away: %v", err)
	}
	var kvs []meshtest.KV
	keep := &fixture{map[protocol.NumericIdentity]string{}, map[netip.Addr]string{}, map[string]string{}, map[string]string{}}
	for i := range 50 {
		id, kv := c.Identity(uint32(256+i), fmt.Sprintf("app%d", i))
		keep.identities[id.ID] = string(kv.Value)
		kvs = append(kvs, kv)
		e, kv := c.IPCache(c.PodIP(i), uint32(256+i), c.HostIP(i%4))
		keep.ipcache[e.IP] = string(kv.Value)
		kvs = append(kvs, kv)
	}
	node, kv := c.Node(c.NodeName(0), c.HostIP(0), netip.MustParsePrefix("10.1.0.0/24"))
	keep.nodes[node.Name] = string(kv.Value)
	kvs = append(kvs, kv)
	c.PutAll(kvs)
	// The restarted etcd has no users yet; re-create them like a mesh
	// apiserver does, then publish the config last.
	c.SetupAuth()
	c.PutSynced()
	c.PutConfig()
	meshtest.Eventually(t, waitTimeout, func() error { return keep.matches(r.rec) })
	st := r.waitState(t, remotecluster.StateReady)
	if st.Connections < 2 {
		t.Errorf("connections %d, want a reconnect", st.Connections)
	}
}

func TestHeartbeatTimeoutReconnects(t *testing.T) {
	c := meshtest.StartCluster(t, "cluster1", 1)
	stop := c.Heartbeat(50 * time.Millisecond)
	publish(c, 5)
	c.PutSynced()
	r := startReader(t, c, remotecluster.NewClusterIDs("local", 9), func(cfg *remotecluster.Config) {
		cfg.HeartbeatTimeout = 500 * time.Millisecond
	})
	r.waitState(t, remotecluster.StateReady)
	if hb := r.Status().LastHeartbeat; hb.IsZero() {
		meshtest.Eventually(t, waitTimeout, func() error {
			if r.Status().LastHeartbeat.IsZero() {
				return errors.New("no heartbeat seen")
			}
			return nil
		})
	}
	stop()
	meshtest.Eventually(t, waitTimeout, func() error {
		st := r.Status()
		if st.Connections < 2 || !strings.Contains(st.LastError, "heartbeat") {
			return fmt.Errorf("connections %d, last error %q", st.Connections, st.LastError)
		}
		return nil
	})
	// A reconnect does not drop state that is still there.
	if n := r.rec.counts(); n != [4]int{4, 3, 5, 5} {
		t.Errorf("state after reconnect: %v", n)
	}
}

func TestCompactedWatchRelists(t *testing.T) {
	c := meshtest.StartCluster(t, "cluster1", 1)
	c.Heartbeat(100 * time.Millisecond)
	f := publish(c, 20)
	c.PutSynced()
	// Hold the reader inside its first list (nodes) until the history it
	// would watch nodes from is compacted away, with node changes in it.
	var once sync.Once
	release := make(chan struct{})
	inList := make(chan struct{})
	r := startReader(t, c, remotecluster.NewClusterIDs("local", 9), func(cfg *remotecluster.Config) {
		cfg.ListPageSize = 1000
	})
	r.rec.mu.Lock()
	r.rec.block = func() {
		once.Do(func() {
			close(inList)
			<-release
		})
	}
	r.rec.mu.Unlock()
	select {
	case <-inList:
	case <-time.After(waitTimeout):
		t.Fatal("reader never listed")
	}
	c.Delete(protocol.NodeKey(c.Name, c.NodeName(1)))
	delete(f.nodes, c.NodeName(1))
	n, kv := c.Node(c.NodeName(9), c.HostIP(9), netip.MustParsePrefix("10.1.9.0/24"))
	c.Put(kv.Key, kv.Value)
	f.nodes[n.Name] = string(kv.Value)
	c.Compact(c.Revision())
	close(release)
	meshtest.Eventually(t, waitTimeout, func() error { return f.matches(r.rec) })
	if st := r.Status(); st.Connections != 1 {
		t.Errorf("connections %d: compaction should relist, not reconnect (last error %q)", st.Connections, st.LastError)
	}
}

func TestEntryUpdateReconnectsWithNewCertificate(t *testing.T) {
	c := meshtest.StartCluster(t, "cluster1", 1)
	c.Heartbeat(100 * time.Millisecond)
	f := publish(c, 5)
	c.PutSynced()
	r := startReader(t, c, remotecluster.NewClusterIDs("local", 9), nil)
	r.waitState(t, remotecluster.StateReady)

	// A certificate from another CA is refused by the server; the
	// reader reports it and keeps the state it has.
	other := meshtest.NewCA(t, "other")
	e := c.Entry(meshtest.RemoteUser)
	e.Cert, e.Key = other.Issue(t, meshtest.RemoteUser, false)
	r.UpdateEntry(e)
	meshtest.Eventually(t, waitTimeout, func() error {
		if st := r.Status(); st.State == remotecluster.StateReady || st.LastError == "" {
			return fmt.Errorf("state %s, error %q", st.State, st.LastError)
		}
		return nil
	})
	if err := f.matches(r.rec); err != nil {
		t.Errorf("state dropped on a failed reconnect: %v", err)
	}
	// A rotated, valid certificate is used from the next connection.
	r.UpdateEntry(c.Entry(meshtest.RemoteUser))
	st := r.waitState(t, remotecluster.StateReady)
	if st.Connections != 2 {
		t.Errorf("connections %d, want 2", st.Connections)
	}
}
