package kvstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/isthmus-mesh/isthmus/apiserver/kvstore"
	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd/meshetcdtest"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// BenchmarkWriterThroughput measures key updates per second into a real
// embedded etcd (TLS, auth, fsync): b.N changed ipcache-sized values over
// 10,000 keys, as a steady stream of changes arrives. updates/s counts the
// changes handed in; commits/s the key writes etcd committed (fewer when
// a key changed again before its commit, which the writer coalesces).
func BenchmarkWriterThroughput(b *testing.B) {
	for _, ops := range []int{128, 512} {
		b.Run(fmt.Sprintf("txn=%d", ops), func(b *testing.B) {
			env := meshetcdtest.Start(b, "c1", meshetcdtest.Options{MaxTxnOps: uint(ops)})
			m, tm := newTestMetrics()
			w := kvstore.NewWriter(discard(), env.Admin, kvstore.WriterConfig{MaxOpsPerTxn: ops, Metrics: m})
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { w.Run(ctx) })
			defer func() { cancel(); wg.Wait() }()
			const keys = 10000
			value := func(i int) []byte {
				e := protocol.IPCacheEntry{ID: protocol.NumericIdentity(65536 + i%1000), K8sNamespace: "ns", K8sPodName: fmt.Sprint("pod-", i)}
				return e.Encode()
			}
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				k := i % keys
				w.Put(fmt.Sprintf("cilium/state/ip/v1/default/10.1.%d.%d", k/256, k%256), value(i), time.Time{})
			}
			if err := w.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			took := time.Since(start).Seconds()
			b.ReportMetric(float64(b.N)/took, "updates/s")
			b.ReportMetric(testutil.ToFloat64(tm.writes)/took, "commits/s")
		})
	}
}
