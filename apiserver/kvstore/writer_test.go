package kvstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/apiserver/kvstore"
	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd/meshetcdtest"
)

type testMetrics struct {
	writes, errors prometheus.Counter
	lag            prometheus.Histogram
	keys           *prometheus.GaugeVec
}

func newTestMetrics() (kvstore.Metrics, *testMetrics) {
	tm := &testMetrics{
		writes: prometheus.NewCounter(prometheus.CounterOpts{Name: "writes"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "errors"}),
		lag:    prometheus.NewHistogram(prometheus.HistogramOpts{Name: "lag"}),
		keys:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keys"}, []string{"prefix"}),
	}
	return kvstore.Metrics{Writes: tm.writes, WriteErrors: tm.errors, Lag: tm.lag, Keys: tm.keys}, tm
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// run starts w.Run until the test ends.
func run(t testing.TB, w *kvstore.Writer) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { w.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func get(t testing.TB, cli *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	resp, err := cli.Get(ctxT(t), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string)
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = string(kv.Value)
	}
	return m
}

func modRevision(t testing.TB, cli *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := cli.Get(ctxT(t), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %v %v", key, resp, err)
	}
	return resp.Kvs[0].ModRevision
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestWriterBatchesAndCoalesces(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	m, tm := newTestMetrics()
	w := kvstore.NewWriter(discard(), env.Admin, kvstore.WriterConfig{
		MaxOpsPerTxn: 100,
		Metrics:      m,
		Prefixes:     map[string]string{"cilium/state/a/": "a"},
	})
	for i := range 1000 {
		w.Put(fmt.Sprintf("cilium/state/a/%04d", i), []byte("old"), time.Time{})
	}
	// The last value of a key changed before its commit is the one written.
	for i := range 1000 {
		w.Put(fmt.Sprintf("cilium/state/a/%04d", i), []byte(fmt.Sprint("v", i)), time.Time{})
	}
	w.Delete("cilium/state/a/0999", time.Time{})
	run(t, w)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := get(t, env.Admin, "cilium/state/a/")
	if len(got) != 999 || got["cilium/state/a/0042"] != "v42" {
		t.Fatalf("etcd holds %d keys, 0042=%q", len(got), got["cilium/state/a/0042"])
	}
	// One transaction per 100 keys: each gives its keys one revision.
	resp, err := env.Admin.Get(ctx, "cilium/state/a/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	revs := map[int64]int{}
	for _, kv := range resp.Kvs {
		revs[kv.ModRevision]++
	}
	if len(revs) != 10 {
		t.Errorf("keys written in %d transactions, want 10: %v", len(revs), revs)
	}
	if n := testutil.ToFloat64(tm.writes); n != 999 {
		t.Errorf("writes = %v, want 999 (the deleted key was never written)", n)
	}
	if n := testutil.ToFloat64(tm.keys.WithLabelValues("a")); n != 999 {
		t.Errorf("keys gauge = %v", n)
	}
	if n := testutil.CollectAndCount(tm.lag); n != 1 {
		t.Errorf("lag histogram series = %d", n)
	}
}

func TestWriterSkipsUnchanged(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	m, tm := newTestMetrics()
	w := kvstore.NewWriter(discard(), env.Admin, kvstore.WriterConfig{Metrics: m})
	run(t, w)
	w.Put("k", []byte("v1"), time.Time{})
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rev := modRevision(t, env.Admin, "k")
	w.Put("k", []byte("v1"), time.Time{})
	// A change and its undo before the commit write nothing either.
	w.Put("k", []byte("v2"), time.Time{})
	w.Put("k", []byte("v1"), time.Time{})
	w.Delete("absent", time.Time{})
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := modRevision(t, env.Admin, "k"); got != rev {
		t.Errorf("unchanged value rewritten: revision %d -> %d", rev, got)
	}
	if n := testutil.ToFloat64(tm.writes); n != 1 {
		t.Errorf("writes = %v, want 1", n)
	}
	w.Put("k", []byte("v2"), time.Time{})
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := get(t, env.Admin, "k")["k"]; got != "v2" {
		t.Errorf("k = %q after a change", got)
	}
}

func TestWriterLoadAndSweep(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	for k, v := range map[string]string{"p/a": "1", "p/b": "2", "p/c": "3", "q/x": "9"} {
		if _, err := env.Admin.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	revA := modRevision(t, env.Admin, "p/a")
	m, tm := newTestMetrics()
	w := kvstore.NewWriter(discard(), env.Admin, kvstore.WriterConfig{Metrics: m, Prefixes: map[string]string{"p/": "p"}})
	n, err := w.Load(ctx, "p/")
	if err != nil || n != 3 {
		t.Fatalf("Load = %d, %v", n, err)
	}
	if got := testutil.ToFloat64(tm.keys.WithLabelValues("p")); got != 3 {
		t.Errorf("keys gauge after load = %v", got)
	}
	run(t, w)
	w.Put("p/a", []byte("1"), time.Time{}) // as loaded: no write
	w.Put("p/b", []byte("20"), time.Time{})
	if swept := w.Sweep("p/"); swept != 1 {
		t.Errorf("Sweep = %d, want 1 (p/c)", swept)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := get(t, env.Admin, "")
	want := map[string]string{"p/a": "1", "p/b": "20", "q/x": "9"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("etcd holds %v, want %v", got, want)
	}
	if modRevision(t, env.Admin, "p/a") != revA {
		t.Error("loaded, unchanged p/a was rewritten")
	}
	if got := testutil.ToFloat64(tm.keys.WithLabelValues("p")); got != 2 {
		t.Errorf("keys gauge after sweep = %v", got)
	}
}

func TestWriterLoadPages(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	for i := 0; i < 12000; i += 100 {
		ops := make([]clientv3.Op, 0, 100)
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("p/%05d", j), "v"))
		}
		if _, err := env.Admin.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	w := kvstore.NewWriter(discard(), env.Admin, kvstore.WriterConfig{})
	if n, err := w.Load(ctx, "p/"); err != nil || n != 12000 {
		t.Fatalf("Load = %d, %v", n, err)
	}
}

// A refused write is retried until it goes through, and counted.
func TestWriterRetries(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	m, tm := newTestMetrics()
	// local-c1 may not write, until it is granted the right below.
	w := kvstore.NewWriter(discard(), env.Client(t, "local-c1"), kvstore.WriterConfig{Metrics: m, RetryBackoff: 5 * time.Millisecond})
	w.Put("cilium/state/x", []byte("v"), time.Time{})
	run(t, w)
	eventually(t, "two failed writes counted", func() bool { return testutil.ToFloat64(tm.errors) >= 2 })
	if _, err := env.Admin.RoleGrantPermission(ctx, "local-c1", "cilium/state/x", "", clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := get(t, env.Admin, "cilium/state/x"); got["cilium/state/x"] != "v" {
		t.Fatalf("after retry etcd holds %v", got)
	}
}

func TestSession(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	s := kvstore.NewSession(discard(), env.Admin, 10*time.Second)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(runCtx); close(done) }()
	if err := s.Put(ctx, "cilium/.heartbeat", []byte("t1")); err != nil {
		t.Fatal(err)
	}
	leaseOf := func() clientv3.LeaseID {
		resp, err := env.Admin.Get(ctx, "cilium/.heartbeat")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return 0
		}
		return clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	first := leaseOf()
	if first == 0 {
		t.Fatal("heartbeat not attached to a lease")
	}
	// A lease revoked behind the session's back is replaced and the key
	// written again.
	if _, err := env.Admin.Revoke(ctx, first); err != nil {
		t.Fatal(err)
	}
	eventually(t, "key rewritten under a new lease", func() bool { l := leaseOf(); return l != 0 && l != first })
	stop()
	<-done
	if l := leaseOf(); l != 0 {
		t.Fatalf("key still there after the session ended (lease %x)", l)
	}
}

// eventually waits up to 30 seconds for cond, checking every 10ms.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(30 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

// A value etcd will never take (above its request size limit) is dropped
// with a log line and a count; the changes batched with it are written.
func TestWriterDropsRefusedChange(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	m, tm := newTestMetrics()
	w := kvstore.NewWriter(discard(), env.Admin, kvstore.WriterConfig{Metrics: m, MaxBytesPerTxn: 4 << 20})
	huge := make([]byte, 1800<<10) // etcd's default limit is 1.5 MiB
	for i := range 20 {
		w.Put(fmt.Sprintf("cilium/state/x/%02d", i), []byte("v"), time.Time{})
	}
	w.Put("cilium/state/x/huge", huge, time.Time{})
	run(t, w)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := get(t, env.Admin, "cilium/state/x/")
	if len(got) != 20 {
		t.Fatalf("etcd holds %d keys, want the 20 small ones", len(got))
	}
	if _, ok := got["cilium/state/x/huge"]; ok {
		t.Fatal("huge value written")
	}
	if n := testutil.ToFloat64(tm.errors); n < 2 {
		t.Errorf("write errors = %v, want the batch and the dropped change counted", n)
	}
	if n := testutil.ToFloat64(tm.writes); n != 20 {
		t.Errorf("writes = %v, want 20", n)
	}
}
