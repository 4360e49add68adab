package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent/internal/agenttest"
	"github.com/isthmus-mesh/isthmus/agent/internal/meshtest"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// benchMaps are the production map sizes, under the world's pin root.
func benchMaps(w *world) dpmaps.Config {
	mc := w.mapsConfig()
	mc.IPCacheMaxEntries = dpmaps.DefaultIPCacheMaxEntries
	mc.FrontendMaxEntries = dpmaps.DefaultFrontendMaxEntries
	mc.SlotMaxEntries = dpmaps.DefaultSlotMaxEntries
	mc.BackendMaxEntries = dpmaps.DefaultBackendMaxEntries
	return mc
}

// cpuSeconds returns the user+system CPU time of pid.
func cpuSeconds(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses.
	fs := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, err1 := strconv.ParseFloat(fs[11], 64)
	st, err2 := strconv.ParseFloat(fs[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

// BenchmarkAgentSync measures a real agent process syncing a remote
// cluster with 250k ipcache entries, 25k identities and 5k global services
// (each with two remote backends and a local Service) into the BPF maps:
// wall time from process start to every entry programmed, the process's
// CPU time, and its peak RSS.
func BenchmarkAgentSync(b *testing.B) {
	const nIPs, nIDs, nSvcs = 250_000, 25_000, 5_000
	w := newWorld(b, map[string]uint32{"bench": 7})
	c := w.remotes["bench"]
	w.home.PutSynced()

	setup := time.Now()
	vips := createServices(b, w, nSvcs)
	b.Logf("created %d local Services in %s", nSvcs, time.Since(setup))
	setup = time.Now()
	kvs := make([]meshtest.KV, 0, nIPs+nIDs+nSvcs)
	for i := range nIDs {
		_, kv := c.Identity(uint32(256+i), fmt.Sprintf("app-%d", i))
		kvs = append(kvs, kv)
	}
	podIP := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)}) }
	for i := range nIPs {
		_, kv := c.IPCache(podIP(i), uint32(256+i%nIDs), c.HostIP(i%250))
		kvs = append(kvs, kv)
	}
	for i := range nSvcs {
		_, kv := c.Service(w.k.Namespace, fmt.Sprintf("svc-%d", i), vips[i], 80, 8080, podIP(2*i), podIP(2*i+1))
		kvs = append(kvs, kv)
	}
	c.PutAll(kvs)
	c.PutSynced()
	kvs = nil
	b.Logf("published %d keys in %s", nIPs+nIDs+nSvcs, time.Since(setup))

	socket := b.TempDir() + "/agent.sock"
	args := append(w.processArgs(socket, benchMaps(w)), "--log-level", "info", "--pprof")
	bin := agenttest.BuildAgent(b)
	for b.Loop() {
		b.StopTimer()
		// Each round starts from empty maps: the pins of the previous one
		// are removed.
		os.RemoveAll(w.pinRoot)
		b.StartTimer()
		start := time.Now()
		p := agenttest.StartBinary(b, bin, args...)
		api := dialAgent(b, socket)
		meshtest.Eventually(b, 10*time.Minute, func() error {
			st, err := status(api)
			if err != nil {
				return err
			}
			if !st.InitialSyncDone {
				return fmt.Errorf("not synced")
			}
			for _, m := range st.Maps {
				switch {
				case m.Name == dpmaps.NameIPHosts && m.Entries < nIPs:
					return fmt.Errorf("iphosts %d", m.Entries)
				case m.Name == dpmaps.NameFrontends && m.Entries < nSvcs:
					return fmt.Errorf("frontends %d", m.Entries)
				}
			}
			return nil
		})
		// The agent's counts are the state's; the maps must hold it all.
		m := openMaps(b, benchMaps(w))
		meshtest.Eventually(b, 10*time.Minute, func() error {
			hosts, err := dpmaps.Dump[dpmaps.IPCacheKey, dpmaps.IPCacheValue](m.IPCache.HostsMap())
			if err != nil {
				return err
			}
			if len(hosts) < nIPs {
				return fmt.Errorf("iphosts %d", len(hosts))
			}
			fes, err := dpmaps.Dump[dpmaps.FrontendKey, dpmaps.FrontendValue](m.Map(dpmaps.NameFrontends))
			if err != nil {
				return err
			}
			if len(fes) < nSvcs {
				return fmt.Errorf("frontends %d", len(fes))
			}
			return nil
		})
		elapsed := time.Since(start)
		m.Close()
		b.StopTimer()
		if f := os.Getenv("AGENT_BENCH_HEAP"); f != "" {
			addr := regexp.MustCompile(`msg="Serving metrics" address=(\S+)`).FindStringSubmatch(p.Log())
			resp, err := http.Get("http://" + addr[1] + "/debug/pprof/heap")
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				os.WriteFile(f, body, 0o644)
			}
		}
		rss, err := p.PeakRSS()
		if err != nil {
			b.Fatal(err)
		}
		cpu, err := cpuSeconds(p.Pid())
		if err != nil {
			b.Fatal(err)
		}
		p.Kill()
		if os.Getenv("AGENT_BENCH_LOG") != "" {
			os.WriteFile(os.Getenv("AGENT_BENCH_LOG"), []byte(p.Log()), 0o644)
		}
		b.ReportMetric(elapsed.Seconds(), "s/sync")
		b.ReportMetric(cpu, "cpu-s/sync")
		b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
		b.StartTimer()
	}
}

// createServices creates n global Services in the world's kube-apiserver
// and returns their ClusterIPs.
func createServices(b *testing.B, w *world, n int) []netip.Addr {
	vips := make([]netip.Addr, n)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for worker := range 8 {
		wg.Go(func() {
			for i := worker; i < n; i += 8 {
				svc := &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i), Namespace: w.k.Namespace, Annotations: map[string]string{meshconfig.ServiceGlobalAnnotation: "true"}},
					Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
				}
				out, err := w.k.Client.CoreV1().Services(w.k.Namespace).Create(context.Background(), svc, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					return
				}
				vips[i] = netip.MustParseAddr(out.Spec.ClusterIP)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("create Services: %v", err)
	}
	return vips
}

// BenchmarkPropagation measures, for a real agent process, the time from a
// remote put (before the etcd request is sent) to the entry being visible
// in the pinned ipcache, under 1,000 updates per second, as seen by a
// reader of the pinned map polling the pending keys every millisecond.
func BenchmarkPropagation(b *testing.B) {
	const rate, duration = 1000, 10 * time.Second
	w := newWorld(b, map[string]uint32{"bench": 7})
	c := w.remotes["bench"]
	w.home.PutSynced()
	var kvs []meshtest.KV
	for i := range 20000 {
		_, kv := c.IPCache(netip.AddrFrom4([4]byte{10, 7, byte(i >> 8), byte(i)}), uint32(256+i%100), c.HostIP(i%50))
		kvs = append(kvs, kv)
	}
	c.PutAll(kvs)
	c.PutSynced()
	socket := b.TempDir() + "/agent.sock"
	args := append(w.processArgs(socket, benchMaps(w)), "--log-level", "warn")
	start := time.Now()
	agenttest.StartBinary(b, agenttest.BuildAgent(b), args...)
	api := dialAgent(b, socket)
	meshtest.Eventually(b, 5*time.Minute, func() error {
		st, err := status(api)
		if err != nil {
			return err
		}
		if !st.InitialSyncDone || st.Started.AsTime().Before(start) {
			return fmt.Errorf("not synced")
		}
		return nil
	})
	m := openMaps(b, benchMaps(w))

	for b.Loop() {
		lat := measurePropagation(b, c, m, rate, duration)
		slices.Sort(lat)
		q := func(f float64) float64 { return lat[int(f*float64(len(lat)-1))].Seconds() * 1000 }
		b.ReportMetric(q(0.5), "p50-ms")
		b.ReportMetric(q(0.99), "p99-ms")
		b.ReportMetric(lat[len(lat)-1].Seconds()*1000, "max-ms")
		b.ReportMetric(float64(len(lat))/duration.Seconds(), "updates/s")
	}
}

type pendingPut struct {
	ip  netip.Addr
	id  protocol.NumericIdentity
	put time.Time
}

func measurePropagation(b *testing.B, c *meshtest.Cluster, m *dpmaps.Maps, rate int, duration time.Duration) []time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), duration+time.Minute)
	defer cancel()
	var mu sync.Mutex
	var pending []pendingPut
	var lat []time.Duration
	writersDone := make(chan struct{})
	const writers = 4
	var wg sync.WaitGroup
	round := time.Now().UnixNano()
	for wr := range writers {
		wg.Go(func() {
			tick := time.NewTicker(time.Second * writers / time.Duration(rate))
			defer tick.Stop()
			deadline := time.Now().Add(duration)
			for i := 0; time.Now().Before(deadline); i++ {
				<-tick.C
				n := i*writers + wr
				ip := netip.AddrFrom4([4]byte{10, 8 + byte(n>>16), byte(n >> 8), byte(n)})
				local := uint32(256 + (round/1e9+int64(n))%1000)
				e, kv := c.IPCache(ip, local, c.HostIP(n%50))
				p := pendingPut{ip: ip, id: e.ID, put: time.Now()}
				mu.Lock()
				pending = append(pending, p)
				mu.Unlock()
				if _, err := c.Client().Put(ctx, kv.Key, string(kv.Value)); err != nil {
					b.Errorf("put: %v", err)
					return
				}
			}
		})
	}
	go func() { wg.Wait(); close(writersDone) }()
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	finished := false
	for {
		select {
		case <-writersDone:
			finished = true
			writersDone = nil
		case <-poll.C:
		case <-ctx.Done():
			b.Fatalf("%d updates never reached the map", len(pending))
		}
		mu.Lock()
		todo := slices.Clone(pending)
		mu.Unlock()
		var seen []netip.Addr
		for _, p := range todo {
			e, ok, err := m.IPCache.Lookup(p.ip)
			if err != nil {
				b.Fatal(err)
			}
			if ok && e.Identity == p.id {
				lat = append(lat, time.Since(p.put))
				seen = append(seen, p.ip)
			}
		}
		mu.Lock()
		pending = slices.DeleteFunc(pending, func(p pendingPut) bool { return slices.Contains(seen, p.ip) })
		left := len(pending)
		mu.Unlock()
		if finished && left == 0 {
			return lat
		}
	}
}
