package agent_test

import (
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/agent/internal/agenttest"
	"github.com/isthmus-mesh/isthmus/agent/internal/meshtest"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// processArgs are the command-line flags of a real agent process for w.
// The process runs in the test's network namespace and cgroup, which other
// tests share: it gets no WireGuard device and does not attach the socket
// LB (the netns and lab tests cover those).
func (w *world) processArgs(socket string, mc dpmaps.Config) []string {
	u := func(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
	return []string{
		"--node-name", w.node, "--cluster-name", "home", "--cluster-id", "1",
		"--kubeconfig", w.k.Kubeconfig,
		"--clustermesh-namespace", w.k.Namespace, "--watch-namespace", w.k.Namespace,
		"--bpf-root", mc.Root, "--state-dir", w.tb.TempDir(),
		"--api-socket", socket, "--metrics-address", "127.0.0.1:0",
		"--heartbeat-timeout", "5s", "--initial-sync-timeout", "1m",
		"--ipcache-max-entries", u(mc.IPCacheMaxEntries), "--lb-frontend-max-entries", u(mc.FrontendMaxEntries),
		"--lb-slot-max-entries", u(mc.SlotMaxEntries), "--lb-backend-max-entries", u(mc.BackendMaxEntries),
		"--lb-revnat-max-entries", u(mc.RevNATMaxEntries), "--policy-max-entries", u(mc.PolicyMaxEntries),
		"--policy-enforcement-max-entries", u(mc.EnforcementMaxEntries), "--ct-max-entries", u(mc.CTMaxEntries),
		"--flow-ring-bytes", u(mc.FlowRingBytes),
		"--encryption", "disabled", "--socklb-cgroup", "-",
	}
}

// waitSyncedSince waits until an agent started after since pruned after
// its initial sync.
func waitSyncedSince(t *testing.T, api agentv1.AgentClient, since time.Time) {
	t.Helper()
	meshtest.Eventually(t, waitTimeout, func() error {
		st, err := status(api)
		if err != nil {
			return err
		}
		if st.Started.AsTime().Before(since) {
			return fmt.Errorf("still talking to the agent started at %s", st.Started.AsTime())
		}
		if !st.InitialSyncDone {
			return fmt.Errorf("initial sync not done")
		}
		return nil
	})
}

// mapWatcher reads the pinned maps every few milliseconds and records any
// moment an entry that must stay was missing.
type mapWatcher struct {
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex // guards the fields below
	reads int
	gaps  []string
}

func watchMaps(t *testing.T, m *dpmaps.Maps, keep []netip.Prefix, fe dpmaps.Frontend) *mapWatcher {
	mw := &mapWatcher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(mw.done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-mw.stop:
				return
			case <-tick.C:
			}
			var gap string
			d, err := m.IPCache.Dump()
			if err != nil {
				gap = err.Error()
			}
			for _, p := range keep {
				if _, ok := d[p]; !ok && gap == "" {
					gap = fmt.Sprintf("%s missing at %s", p, time.Now().Format(time.StampMicro))
				}
			}
			if _, _, err := serviceBackends(m, fe); err != nil && gap == "" {
				gap = err.Error()
			}
			mw.mu.Lock()
			mw.reads++
			if gap != "" {
				mw.gaps = append(mw.gaps, gap)
			}
			mw.mu.Unlock()
		}
	}()
	t.Cleanup(mw.finish)
	return mw
}

func (mw *mapWatcher) finish() {
	select {
	case <-mw.stop:
	default:
		close(mw.stop)
	}
	<-mw.done
}

// TestAgentRestartKeepsMapsPopulated kills a real agent process with
// SIGKILL and starts another: the pinned maps must serve every entry the
// whole time, and what changed while no agent ran must be applied (the
// deleted key swept, the new one added) once the new agent synced.
func TestAgentRestartKeepsMapsPopulated(t *testing.T) {
	privileged.Require(t)
	w := newWorld(t, map[string]uint32{"east": 2})
	east := w.remotes["east"]
	homeIPs, eastIPs := pods(w.home, 50), pods(east, 200)
	echo := w.globalService("echo", nil)
	vip := netip.MustParseAddr(echo.Spec.ClusterIP)
	_, kv := east.Service(w.k.Namespace, "echo", netip.MustParseAddr("10.96.200.1"), 80, 8080, eastIPs[0])
	east.Put(kv.Key, kv.Value)
	w.home.PutSynced()
	east.PutSynced()

	socket := w.tb.TempDir() + "/agent.sock"
	args := w.processArgs(socket, w.mapsConfig())
	start1 := time.Now()
	p1 := agenttest.StartProcess(t, args...)
	api := dialAgent(t, socket)
	waitSyncedSince(t, api, start1)
	m := openMaps(t, w.mapsConfig())
	var keep []netip.Prefix
	for _, ip := range append(homeIPs, eastIPs[1:]...) {
		keep = append(keep, host(ip))
	}
	fe := dpmaps.Frontend{Addr: vip, Port: 80, Protocol: dpmaps.ProtoTCP}
	want := map[netip.Prefix]uint16{}
	for _, ip := range homeIPs {
		want[host(ip)] = 1
	}
	for _, ip := range eastIPs {
		want[host(ip)] = 2
	}
	meshtest.Eventually(t, waitTimeout, func() error {
		if err := ipcacheHas(m, want, nil); err != nil {
			return err
		}
		_, _, err := serviceBackends(m, fe)
		return err
	})

	mw := watchMaps(t, m, keep, fe)
	p1.Kill()
	// While no agent runs, east deletes one pod and adds another.
	stale := host(eastIPs[0])
	east.Delete(protocol.IPCacheKey(eastIPs[0]))
	added, kv := east.IPCache(east.PodIP(500), 300, east.HostIP(0))
	east.Put(kv.Key, kv.Value)

	start2 := time.Now()
	p2 := agenttest.StartProcess(t, args...)
	waitSyncedSince(t, api, start2)
	meshtest.Eventually(t, waitTimeout, func() error {
		return ipcacheHas(m, map[netip.Prefix]uint16{host(added.IP): 2}, []netip.Prefix{stale})
	})
	// A clean stop leaves the maps populated too.
	if err := p2.Stop(); err != nil {
		t.Errorf("agent stop: %v", err)
	}
	meshtest.Eventually(t, time.Second, func() error {
		mw.mu.Lock()
		defer mw.mu.Unlock()
		if mw.reads < 10 {
			return fmt.Errorf("only %d reads", mw.reads)
		}
		return nil
	})
	mw.finish()
	mw.mu.Lock()
	defer mw.mu.Unlock()
	t.Logf("watched the maps %d times across kill, restart and stop", mw.reads)
	if len(mw.gaps) > 0 {
		t.Errorf("entries missing in %d of %d reads; first: %s", len(mw.gaps), mw.reads, mw.gaps[0])
	}
}

// TestAgentRemoteRestartLeavesNoStaleEntry restarts a remote's etcd with
// its state wiped and republished minus some keys: while the remote is
// away its entries stay, and once it is back the deleted ones go.
func TestAgentRemoteRestartLeavesNoStaleEntry(t *testing.T) {
	privileged.Require(t)
	w := newWorld(t, map[string]uint32{"east": 2})
	east := w.remotes["east"]
	eastIPs := pods(east, 40)
	w.home.PutSynced()
	east.PutSynced()
	api := w.runAgent(w.agentConfig())
	waitSynced(t, api)
	m := openMaps(t, w.mapsConfig())
	all := map[netip.Prefix]uint16{}
	for _, ip := range eastIPs {
		all[host(ip)] = 2
	}
	meshtest.Eventually(t, waitTimeout, func() error { return ipcacheHas(m, all, nil) })

	east.Stop()
	meshtest.Eventually(t, waitTimeout, func() error {
		st, err := status(api)
		if err != nil {
			return err
		}
		if c := clusterOf(st, "east"); c.Connected {
			return fmt.Errorf("east still connected: %s", c.State)
		}
		return nil
	})
	if err := ipcacheHas(m, all, nil); err != nil {
		t.Fatalf("entries of a remote that went away were dropped: %v", err)
	}
	east.Start(true)
	var kvs []meshtest.KV
	keep := map[netip.Prefix]uint16{}
	var gone []netip.Prefix
	for i, ip := range eastIPs {
		if i%2 == 0 {
			gone = append(gone, host(ip))
			continue
		}
		_, kv := east.IPCache(ip, uint32(256+i%10), east.HostIP(i%3))
		kvs = append(kvs, kv)
		keep[host(ip)] = 2
	}
	east.PutAll(kvs)
	east.SetupAuth()
	east.PutSynced()
	east.PutConfig()
	meshtest.Eventually(t, waitTimeout, func() error { return ipcacheHas(m, keep, gone) })
}

// TestAgentSkipsMalformedValues publishes 1,000 malformed values among
// 1,000 valid ones: every valid one reaches the map, every bad one is
// counted, and the status says so.
func TestAgentSkipsMalformedValues(t *testing.T) {
	privileged.Require(t)
	w := newWorld(t, map[string]uint32{"east": 2})
	east := w.remotes["east"]
	var kvs []meshtest.KV
	want := map[netip.Prefix]uint16{}
	for i := range 1000 {
		e, kv := east.IPCache(east.PodIP(i), uint32(256+i%10), east.HostIP(i%3))
		kvs = append(kvs, kv)
		want[host(e.IP)] = 2
		var bad meshtest.KV
		switch i % 4 {
		case 0:
			bad = meshtest.KV{Key: protocol.IPCacheKey(east.PodIP(10000 + i)), Value: []byte("{")}
		case 1: // identity of another cluster
			e, kv := east.IPCache(east.PodIP(10000+i), 300, east.HostIP(0))
			e.ID = protocol.ComposeIdentity(7, 300, 255)
			bad = meshtest.KV{Key: kv.Key, Value: e.Encode()}
		case 2:
			bad = meshtest.KV{Key: protocol.IdentityKey(protocol.ComposeIdentity(2, uint32(1000+i), 255)), Value: []byte("no labels here")}
		case 3:
			bad = meshtest.KV{Key: protocol.ServiceKey("east", "ns", fmt.Sprintf("s%d", i)), Value: []byte(`{"cluster":"west"}`)}
		}
		kvs = append(kvs, bad)
	}
	east.PutAll(kvs)
	w.home.PutSynced()
	east.PutSynced()
	api := w.runAgent(w.agentConfig())
	waitSynced(t, api)
	m := openMaps(t, w.mapsConfig())
	meshtest.Eventually(t, waitTimeout, func() error { return ipcacheHas(m, want, nil) })
	st, err := status(api)
	if err != nil {
		t.Fatal(err)
	}
	var errs uint64
	for _, k := range clusterOf(st, "east").Kinds {
		errs += k.DecodeErrors
	}
	if errs != 1000 {
		t.Errorf("decode errors in status: %d, want 1000", errs)
	}
	sum := 0.0
	for _, k := range protocol.Kinds {
		sum += metricValue(t, w, "isthmus_agent_remote_decode_errors_total", map[string]string{"cluster": "east", "kind": string(k)})
	}
	if sum != 1000 {
		t.Errorf("decode error metrics sum to %v, want 1000", sum)
	}
}
