package reconcilers_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/agent/internal/agenttest"
	"github.com/isthmus-mesh/isthmus/agent/internal/meshtest"
	"github.com/isthmus-mesh/isthmus/agent/reconcilers"
	"github.com/isthmus-mesh/isthmus/agent/state"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

const waitTimeout = 30 * time.Second

func openMaps(t *testing.T, root string) *dpmaps.Maps {
	t.Helper()
	m, err := dpmaps.Open(dpmaps.Config{
		Root: root, IPCacheMaxEntries: 4096, FrontendMaxEntries: 256, SlotMaxEntries: 1024, BackendMaxEntries: 512,
		RevNATMaxEntries: 256, PolicyMaxEntries: 256, EnforcementMaxEntries: 256, CTMaxEntries: 256, FlowRingBytes: 16 * 1024,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func newState(t *testing.T) *state.State {
	t.Helper()
	s, err := state.New(state.Config{LocalCluster: "home", LocalClusterID: 1, MaxConnectedClusters: 255, NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func run(t *testing.T, f func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func pod(ip string, cluster, local uint32, host string) *protocol.IPCacheEntry {
	return &protocol.IPCacheEntry{IP: netip.MustParseAddr(ip), ID: protocol.ComposeIdentity(cluster, local, 255), HostIP: netip.MustParseAddr(host)}
}

func dumpIPCache(t *testing.T, m *dpmaps.Maps) map[netip.Prefix]dpmaps.IPCacheEntry {
	t.Helper()
	d, err := m.IPCache.Dump()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestIPCacheReconcilerKeepsPinnedEntriesUntilPruneAllowed(t *testing.T) {
	root := agenttest.PinRoot(t)
	m := openMaps(t, root)
	// A previous agent left entries: one the state will confirm, one it
	// will change, one nobody exports any more.
	p := netip.MustParsePrefix
	keepE := dpmaps.IPCacheEntry{Identity: protocol.ComposeIdentity(2, 300, 255), TunnelEndpoint: netip.MustParseAddr("172.18.2.1"), ClusterID: 2}
	for pfx, e := range map[string]dpmaps.IPCacheEntry{
		"10.2.0.1/32": keepE,
		"10.2.0.2/32": keepE,
		"10.2.0.3/32": keepE,
	} {
		if err := m.IPCache.Upsert(p(pfx), e); err != nil {
			t.Fatal(err)
		}
	}
	s := newState(t)
	r, err := reconcilers.NewIPCache(slog.New(slog.DiscardHandler), reconcilers.IPCacheConfig{State: s, Map: m.IPCache})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)

	a := s.Cluster("a")
	a.UpsertIPCache(pod("10.2.0.1", 2, 300, "172.18.2.1"))
	a.UpsertIPCache(pod("10.2.0.2", 2, 301, "172.18.2.9"))
	a.UpsertIPCache(pod("fd00::5", 2, 302, "172.18.2.1"))
	a.UpsertNode(&protocol.Node{Name: "an", Cluster: "a", ClusterID: 2, IPAddresses: []protocol.NodeAddress{{Type: protocol.AddressInternalIP, IP: netip.MustParseAddr("172.18.2.1")}}})
	meshtest.Eventually(t, waitTimeout, func() error {
		d := dumpIPCache(t, m)
		if e := d[p("10.2.0.2/32")]; e.Identity != protocol.ComposeIdentity(2, 301, 255) || e.TunnelEndpoint != netip.MustParseAddr("172.18.2.9") {
			return fmt.Errorf("10.2.0.2: %+v", e)
		}
		if e := d[p("fd00::5/128")]; e.ClusterID != 2 {
			return fmt.Errorf("fd00::5: %+v", e)
		}
		if e := d[p("172.18.2.1/32")]; e.Identity != protocol.IdentityRemoteNode || e.Flags != dpmaps.IPCacheFlagNode {
			return fmt.Errorf("node address: %+v", e)
		}
		return nil
	})
	// Not pruned yet: the stale entry stays until the sync is complete.
	if _, ok := dumpIPCache(t, m)[p("10.2.0.3/32")]; !ok {
		t.Fatal("stale entry pruned before AllowPrune")
	}
	r.AllowPrune()
	meshtest.Eventually(t, waitTimeout, func() error {
		if _, ok := dumpIPCache(t, m)[p("10.2.0.3/32")]; ok {
			return fmt.Errorf("stale entry still there")
		}
		return nil
	})
	if n, total := len(dumpIPCache(t, m)), first(r.Entries()); n != 4 || total != 4 {
		t.Errorf("map has %d entries, reconciler counts %d; want 4", n, total)
	}

	// A prefix wider than a host goes to the trie, hosts to the hash; the
	// datapath finds both by longest match.
	cidr := pod("10.7.0.0", 2, 302, "172.18.2.1")
	cidr.Mask = []byte{255, 255, 0, 0}
	a.UpsertIPCache(cidr)
	meshtest.Eventually(t, waitTimeout, func() error {
		trie, err := dpmaps.Dump[dpmaps.IPCacheKey, dpmaps.IPCacheValue](m.IPCache.Map())
		if err != nil {
			return err
		}
		hosts, err := dpmaps.Dump[dpmaps.IPCacheKey, dpmaps.IPCacheValue](m.IPCache.HostsMap())
		if err != nil {
			return err
		}
		if len(trie) != 1 || len(hosts) != 4 {
			return fmt.Errorf("trie %d entries, hosts %d; want 1 and 4", len(trie), len(hosts))
		}
		if e, _, _ := m.IPCache.Lookup(netip.MustParseAddr("10.7.3.4")); e.Identity != cidr.ID {
			return fmt.Errorf("10.7.3.4 looks up %+v", e)
		}
		return nil
	})
	a.DeleteIPCache(cidr.IP)

	// Removing the cluster withdraws exactly its entries.
	s.Cluster("b").UpsertIPCache(pod("10.3.0.1", 3, 300, "172.18.3.1"))
	s.RemoveCluster("a")
	meshtest.Eventually(t, waitTimeout, func() error {
		d := dumpIPCache(t, m)
		if len(d) != 1 {
			return fmt.Errorf("%d entries: %v", len(d), d)
		}
		if _, ok := d[p("10.3.0.1/32")]; !ok {
			return fmt.Errorf("b's entry missing")
		}
		return nil
	})
}

func TestServiceReconciler(t *testing.T) {
	root := agenttest.PinRoot(t)
	m := openMaps(t, root)
	s := newState(t)
	r, err := reconcilers.NewServices(slog.New(slog.DiscardHandler), reconcilers.ServiceConfig{State: s, Maps: m})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	r.AllowPrune()

	nn := state.ServiceName{Namespace: "test", Name: "echo"}
	tcp := func(port uint16) protocol.PortConfiguration {
		return protocol.PortConfiguration{"http": {Protocol: protocol.ProtoTCP, Port: port}}
	}
	s.Cluster("home").UpsertService(&protocol.ClusterService{Cluster: "home", ClusterID: 1, Namespace: "test", Name: "echo", Shared: true,
		Backends: map[string]protocol.PortConfiguration{"10.1.0.1": tcp(8080)}})
	s.Cluster("a").UpsertService(&protocol.ClusterService{Cluster: "a", ClusterID: 2, Namespace: "test", Name: "echo", Shared: true,
		Backends: map[string]protocol.PortConfiguration{"10.2.0.1": tcp(8080), "10.2.0.2": tcp(8080)}})
	fe := state.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: protocol.ProtoTCP, PortName: "http"}
	s.UpsertLocalService(nn, state.LocalService{Frontends: []state.Frontend{fe, {Addr: fe.Addr, Port: 53, Protocol: protocol.ProtoSCTP, PortName: "http"}}, Shared: true, Affinity: meshconfig.AffinityLocal})

	want := func(backends ...string) func() error {
		return func() error {
			svcs, err := m.Services.Dump()
			if err != nil {
				return err
			}
			if len(backends) == 0 {
				if len(svcs) != 0 {
					return fmt.Errorf("services %+v, want none", svcs)
				}
				return nil
			}
			if len(svcs) != 1 {
				return fmt.Errorf("%d services: %+v", len(svcs), svcs)
			}
			svc := svcs[0]
			if svc.Frontend != (dpmaps.Frontend{Addr: fe.Addr, Port: 80, Protocol: dpmaps.ProtoTCP}) || svc.Affinity != dpmaps.AffinityLocal {
				return fmt.Errorf("service %+v", svc)
			}
			var got []string
			for _, b := range svc.Backends {
				got = append(got, fmt.Sprintf("%s:%d/%d/%v", b.Addr, b.Port, b.ClusterID, b.Local))
			}
			slices.Sort(got)
			if !slices.Equal(got, backends) {
				return fmt.Errorf("backends %v, want %v", got, backends)
			}
			return nil
		}
	}
	meshtest.Eventually(t, waitTimeout, want("10.1.0.1:8080/1/true", "10.2.0.1:8080/2/false", "10.2.0.2:8080/2/false"))
	s.Cluster("a").DeleteService("test", "echo")
	meshtest.Eventually(t, waitTimeout, want("10.1.0.1:8080/1/true"))
	s.DeleteLocalService(nn)
	meshtest.Eventually(t, waitTimeout, want())
}

func first(a, _ int) int { return a }

// TestServiceReconcilerKeepsPinnedBackendsUntilPruneAllowed restarts the
// reconciler on pinned maps: while the remote clusters are still being
// read again, a service written from the local cluster alone keeps the
// backends it had, so connections to it do not fail during the restart;
// the full pass after the initial sync drops those that went away.
func TestServiceReconcilerKeepsPinnedBackendsUntilPruneAllowed(t *testing.T) {
	root := agenttest.PinRoot(t)
	nn := state.ServiceName{Namespace: "test", Name: "echo"}
	fe := state.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: protocol.ProtoTCP, PortName: "http"}
	tcp := protocol.PortConfiguration{"http": {Protocol: protocol.ProtoTCP, Port: 8080}}
	local := func(s *state.State) {
		s.UpsertLocalService(nn, state.LocalService{Frontends: []state.Frontend{fe}, Shared: true, Affinity: meshconfig.AffinityNone})
		s.Cluster("home").UpsertService(&protocol.ClusterService{Cluster: "home", ClusterID: 1, Namespace: "test", Name: "echo", Shared: true,
			Backends: map[string]protocol.PortConfiguration{"10.1.0.1": tcp}})
	}
	remote := func(s *state.State, ips ...string) {
		be := map[string]protocol.PortConfiguration{}
		for _, ip := range ips {
			be[ip] = tcp
		}
		s.Cluster("a").UpsertService(&protocol.ClusterService{Cluster: "a", ClusterID: 2, Namespace: "test", Name: "echo", Shared: true, Backends: be})
	}
	backends := func(m *dpmaps.Maps) []string {
		svcs, err := m.Services.Dump()
		if err != nil || len(svcs) != 1 {
			return []string{fmt.Sprintf("%d services, %v", len(svcs), err)}
		}
		var out []string
		for _, b := range svcs[0].Backends {
			out = append(out, b.Addr.String())
		}
		slices.Sort(out)
		return out
	}
	want := func(m *dpmaps.Maps, ips ...string) func() error {
		return func() error {
			if got := backends(m); !slices.Equal(got, ips) {
				return fmt.Errorf("backends %v, want %v", got, ips)
			}
			return nil
		}
	}

	// The first agent programs the service with every backend.
	m1 := openMaps(t, root)
	s1 := newState(t)
	r1, err := reconcilers.NewServices(slog.New(slog.DiscardHandler), reconcilers.ServiceConfig{State: s1, Maps: m1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r1.Run(ctx); close(done) }()
	r1.AllowPrune()
	local(s1)
	remote(s1, "10.2.0.1", "10.2.0.2")
	meshtest.Eventually(t, waitTimeout, want(m1, "10.1.0.1", "10.2.0.1", "10.2.0.2"))
	stop()
	<-done

	// The restarted agent knows the local cluster first.
	m2 := openMaps(t, root)
	s2 := newState(t)
	r2, err := reconcilers.NewServices(slog.New(slog.DiscardHandler), reconcilers.ServiceConfig{State: s2, Maps: m2})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r2.Run)
	local(s2)
	meshtest.Eventually(t, waitTimeout, func() error {
		if len(r2.Programmed(nn)) == 0 {
			return fmt.Errorf("service not written yet")
		}
		return nil
	})
	if err := want(m2, "10.1.0.1", "10.2.0.1", "10.2.0.2")(); err != nil {
		t.Fatalf("after the local cluster was read again: %v", err)
	}
	// The remote cluster is read again, without one backend: it stays
	// until the initial sync is complete, then goes.
	remote(s2, "10.2.0.1")
	meshtest.Eventually(t, waitTimeout, func() error {
		if got := r2.Programmed(nn); len(got) != 1 || len(got[0].Backends) != 3 {
			return fmt.Errorf("programmed %+v", got)
		}
		return nil
	})
	r2.AllowPrune()
	meshtest.Eventually(t, waitTimeout, want(m2, "10.1.0.1", "10.2.0.1"))
}
