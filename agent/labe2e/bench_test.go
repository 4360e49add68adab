package labe2e

import (
	"context"
	"testing"
	"time"
)

// BenchmarkNodeDatapath measures, on one lab of two clusters of one node
// each with the real agents:
//
//   - connect-to-first-request: from meshops.Connect returning to the
//     first HTTP request from a pod in one cluster to a pod in the other
//     succeeding (readers connect, nodes and keys arrive, peers and
//     routes are set, the WireGuard handshake); the clusters are
//     disconnected again between iterations, untimed;
//   - agent-restart: restarting the client node's agent during a steady
//     loop of new connections through the socket LB and the tunnel:
//     requests failed, the slowest request, and the time until the new
//     agent served its API and completed its initial sync.
//
// ns/op is dominated by the harness; the custom metrics are the numbers.
func BenchmarkNodeDatapath(b *testing.B) {
	m := newMesh(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	b.Run("connect-to-first-request", func(b *testing.B) {
		var total time.Duration
		for range b.N {
			total += m.connect(ctx, b)
			b.StopTimer()
			m.disconnect(ctx, b)
			b.StartTimer()
		}
		b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/first-request")
	})

	b.Run("agent-restart", func(b *testing.B) {
		b.StopTimer()
		m.connect(ctx, b)
		b.StartTimer()
		var failed, requests int
		var slowest, serving, synced time.Duration
		for range b.N {
			res := measureRestarts(ctx, b, m.lab, m.c1.Name, m.client.Name, "http://"+m.vip+"/", m.n1)
			failed += len(res.failed)
			requests += res.requests
			slowest = max(slowest, res.max)
			serving += res.serving[0]
			synced += res.synced[0]
		}
		n := float64(b.N)
		b.ReportMetric(float64(failed)/n, "failed-requests/op")
		b.ReportMetric(float64(requests)/n, "requests/op")
		b.ReportMetric(float64(slowest.Microseconds())/1000, "max-request-ms")
		b.ReportMetric(float64(serving.Milliseconds())/n, "ms-to-serving")
		b.ReportMetric(float64(synced.Milliseconds())/n, "ms-to-synced")
	})
}
