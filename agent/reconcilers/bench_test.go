package reconcilers_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/agent/internal/agenttest"
	"github.com/isthmus-mesh/isthmus/agent/internal/meshtest"
	"github.com/isthmus-mesh/isthmus/agent/reconcilers"
	"github.com/isthmus-mesh/isthmus/agent/remotecluster"
	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
)

// BenchmarkReaderToIPCacheMap measures the in-process pipeline from a
// remote mesh etcd to the pinned ipcache: list (paged, decoded, validated),
// merge, and batched map writes, for 250k ipcache entries and 25k
// identities. The agent-process benchmark (agent package) adds Services and
// measures RSS.
func BenchmarkReaderToIPCacheMap(b *testing.B) {
	const nIPs, nIDs = 250_000, 25_000
	root := agenttest.PinRoot(b)
	c := meshtest.StartCluster(b, "bench", 7)
	c.Heartbeat(time.Second)
	kvs := make([]meshtest.KV, 0, nIPs+nIDs)
	for i := range nIDs {
		_, kv := c.Identity(uint32(256+i), fmt.Sprintf("app-%d", i))
		kvs = append(kvs, kv)
	}
	for i := range nIPs {
		ip := netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)})
		_, kv := c.IPCache(ip, uint32(256+i%nIDs), c.HostIP(i%250))
		kvs = append(kvs, kv)
	}
	loadStart := time.Now()
	c.PutAll(kvs)
	c.PutSynced()
	b.Logf("loaded %d keys in %s", len(kvs), time.Since(loadStart))
	kvs = nil

	for b.Loop() {
		m, err := dpmaps.Open(dpmaps.Config{Root: root + "/" + bpffstest.Suffix(), IPCacheMaxEntries: 512 * 1024, FlowRingBytes: 16 * 1024})
		if err != nil {
			b.Fatal(err)
		}
		s, err := state.New(state.Config{LocalCluster: "home", LocalClusterID: 1, MaxConnectedClusters: 255})
		if err != nil {
			b.Fatal(err)
		}
		r, err := reconcilers.NewIPCache(slog.New(slog.DiscardHandler), reconcilers.IPCacheConfig{State: s, Map: m.IPCache})
		if err != nil {
			b.Fatal(err)
		}
		rc, err := remotecluster.New(benchLogger(), remotecluster.Config{
			Entry: c.Entry(meshtest.RemoteUser), MaxConnectedClusters: 255,
			ClusterIDs: remotecluster.NewClusterIDs("home", 1), Handler: s.Cluster("bench"),
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		done := make(chan struct{}, 2)
		go func() { r.Run(ctx); done <- struct{}{} }()
		go func() { rc.Run(ctx); done <- struct{}{} }()
		for rc.Status().State != remotecluster.StateReady || first(r.Entries()) < nIPs {
			time.Sleep(5 * time.Millisecond) // polling a benchmark's progress, not synchronising
		}
		// The state holds everything; wait for the map to.
		for {
			hosts, err := dpmaps.Dump[dpmaps.IPCacheKey, dpmaps.IPCacheValue](m.IPCache.HostsMap())
			if err != nil {
				b.Fatal(err)
			}
			if len(hosts) >= nIPs {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/sync")
		cancel()
		<-done
		<-done
		if sum, _ := s.Summary("bench"); sum.Identities != nIDs {
			b.Fatalf("identities %d", sum.Identities)
		}
		m.Unpin()
		m.Close()
	}
}

func benchLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}
