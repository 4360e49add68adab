package state

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

func newState(t *testing.T) *State {
	t.Helper()
	s, err := New(Config{LocalCluster: "home", LocalClusterID: 1, MaxConnectedClusters: 255, NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ipEntry(ip string, clusterID, local uint32, host string) *protocol.IPCacheEntry {
	return &protocol.IPCacheEntry{IP: netip.MustParseAddr(ip), ID: protocol.ComposeIdentity(clusterID, local, 255), HostIP: netip.MustParseAddr(host)}
}

func node(cluster string, id uint32, name, ip string) *protocol.Node {
	return &protocol.Node{Name: name, Cluster: cluster, ClusterID: id, IPAddresses: []protocol.NodeAddress{{Type: protocol.AddressInternalIP, IP: netip.MustParseAddr(ip)}}}
}

func resolve(s *State, p string) (IPCacheEntry, bool) {
	var got IPCacheEntry
	var found bool
	s.ResolveIPCache(slices.Values([]netip.Prefix{netip.MustParsePrefix(p)}), func(_ netip.Prefix, e IPCacheEntry, ok bool) { got, found = e, ok })
	return got, found
}

func takeKeys[K comparable](c *Changes[K]) []K {
	keys, _ := c.Take(0)
	return slices.Collect(maps.Keys(keys))
}

func TestIPCacheMergeAndWithdraw(t *testing.T) {
	s := newState(t)
	ch := s.SubscribeIPCache()
	home, b, a := s.Cluster("home"), s.Cluster("b"), s.Cluster("a")
	home.UpsertNode(node("home", 1, "n1", "172.18.0.1"))
	home.UpsertIPCache(ipEntry("10.1.0.5", 1, 300, "172.18.0.1"))
	home.UpsertIPCache(ipEntry("10.1.0.6", 1, 301, "172.18.0.2"))
	b.UpsertIPCache(ipEntry("10.2.0.5", 2, 300, "172.18.2.1"))
	// Two clusters claim one address: the local cluster wins, then by name.
	b.UpsertIPCache(ipEntry("10.1.0.5", 2, 400, "172.18.2.1"))
	b.UpsertIPCache(ipEntry("10.9.0.1", 2, 401, "172.18.2.1"))
	a.UpsertIPCache(ipEntry("10.9.0.1", 3, 402, "172.18.3.1"))
	b.UpsertNode(node("b", 2, "bn", "172.18.2.1"))

	if e, _ := resolve(s, "10.1.0.5/32"); e.Cluster != "home" || !e.LocalNode || e.Identity != protocol.ComposeIdentity(1, 300, 255) {
		t.Errorf("10.1.0.5: %+v", e)
	}
	if e, _ := resolve(s, "10.1.0.6/32"); e.LocalNode || e.TunnelEndpoint != netip.MustParseAddr("172.18.0.2") {
		t.Errorf("pod on another local node: %+v", e)
	}
	if e, _ := resolve(s, "10.9.0.1/32"); e.Cluster != "a" || e.ClusterID != 3 {
		t.Errorf("10.9.0.1: %+v", e)
	}
	if e, _ := resolve(s, "172.18.2.1/32"); !e.Node || e.Identity != protocol.IdentityRemoteNode || e.ClusterID != 2 {
		t.Errorf("remote node address: %+v", e)
	}
	if e, _ := resolve(s, "172.18.0.1/32"); !e.Node || e.Identity != protocol.IdentityHost || !e.LocalNode {
		t.Errorf("own node address: %+v", e)
	}
	if n, hosts := s.IPCacheSize(); n != 6 || hosts != 6 {
		t.Errorf("merged size %d, want 6", n)
	}
	ch.Take(0)

	// Withdrawing b changes exactly b's prefixes; the shared one falls back.
	s.RemoveCluster("b")
	got := takeKeys(ch)
	slices.SortFunc(got, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	want := []netip.Prefix{netip.MustParsePrefix("10.1.0.5/32"), netip.MustParsePrefix("10.2.0.5/32"), netip.MustParsePrefix("10.9.0.1/32"), netip.MustParsePrefix("172.18.2.1/32")}
	if !slices.Equal(got, want) {
		t.Errorf("changed after removing b: %v, want %v", got, want)
	}
	if _, ok := resolve(s, "10.2.0.5/32"); ok {
		t.Error("b's entry survived its removal")
	}
	if e, _ := resolve(s, "10.1.0.5/32"); e.Cluster != "home" {
		t.Errorf("shared prefix after removal: %+v", e)
	}
	// Writers of a removed cluster are dropped.
	b.UpsertIPCache(ipEntry("10.2.0.7", 2, 300, "172.18.2.1"))
	if _, ok := resolve(s, "10.2.0.7/32"); ok {
		t.Error("write to removed cluster landed")
	}
	// Unchanged values do not wake consumers.
	home.UpsertIPCache(ipEntry("10.1.0.6", 1, 301, "172.18.0.2"))
	if ch.Pending() != 0 {
		t.Errorf("unchanged upsert left %d pending", ch.Pending())
	}
}

func TestIPCacheMaskedKeys(t *testing.T) {
	s := newState(t)
	w := s.Cluster("a")
	e := ipEntry("10.5.0.0", 2, 300, "172.18.2.1")
	e.Mask = []byte{255, 255, 255, 0}
	w.UpsertIPCache(e)
	if _, ok := resolve(s, "10.5.0.0/24"); !ok {
		t.Fatal("masked entry missing")
	}
	// The same key without a mask moves the entry to the host prefix.
	w.UpsertIPCache(ipEntry("10.5.0.0", 2, 300, "172.18.2.1"))
	if _, ok := resolve(s, "10.5.0.0/24"); ok {
		t.Error("old masked prefix kept")
	}
	w.UpsertIPCache(e)
	w.DeleteIPCache(netip.MustParseAddr("10.5.0.0"))
	if n, _ := s.IPCacheSize(); n != 0 {
		t.Errorf("size %d after delete", n)
	}
}

func export(cluster string, id uint32, ns, name string, shared bool, backends map[string]protocol.PortConfiguration) *protocol.ClusterService {
	return &protocol.ClusterService{Cluster: cluster, ClusterID: id, Namespace: ns, Name: name, Shared: shared, Backends: backends}
}

func tcp(name string, port uint16) protocol.PortConfiguration {
	return protocol.PortConfiguration{name: {Protocol: protocol.ProtoTCP, Port: port}}
}

func backendSet(d DesiredService) []string {
	var out []string
	for _, b := range d.Backends {
		out = append(out, netip.AddrPortFrom(b.Addr, b.Port).String()+"@"+b.Cluster)
	}
	slices.Sort(out)
	return out
}

func TestServicesMerge(t *testing.T) {
	s := newState(t)
	ch := s.SubscribeServices()
	nn := ServiceName{"test", "echo"}
	home, a, b := s.Cluster("home"), s.Cluster("a"), s.Cluster("b")
	home.UpsertService(export("home", 1, "test", "echo", true, map[string]protocol.PortConfiguration{"10.1.0.1": tcp("http", 8080)}))
	a.UpsertService(export("a", 2, "test", "echo", true, map[string]protocol.PortConfiguration{
		"10.2.0.1": tcp("http", 8080), "10.2.0.2": tcp("other", 9090), "fd00::1": tcp("http", 8080),
	}))
	b.UpsertService(export("b", 3, "test", "echo", false, map[string]protocol.PortConfiguration{"10.3.0.1": tcp("http", 8080)}))
	if got := s.Service(nn); got != nil {
		t.Fatalf("served without a local Service: %+v", got)
	}
	fe := Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: protocol.ProtoTCP, PortName: "http"}
	s.UpsertLocalService(nn, LocalService{Frontends: []Frontend{fe}, Shared: true, Affinity: meshconfig.AffinityLocal})
	got := s.Service(nn)
	if len(got) != 1 || got[0].Affinity != meshconfig.AffinityLocal || got[0].Frontend != fe {
		t.Fatalf("service: %+v", got)
	}
	// Port names match, families match, shared=false clusters give nothing.
	if bs := backendSet(got[0]); !slices.Equal(bs, []string{"10.1.0.1:8080@home", "10.2.0.1:8080@a"}) {
		t.Errorf("backends %v", bs)
	}
	for _, be := range got[0].Backends {
		if be.Local != (be.Cluster == "home") || (be.Cluster == "a" && be.ClusterID != 2) {
			t.Errorf("backend %+v", be)
		}
	}

	// The local Service not shared: local backends come from the slices.
	s.SetLocalEndpoints(nn, map[string]protocol.PortConfiguration{"10.1.0.9": tcp("http", 8080)})
	s.UpsertLocalService(nn, LocalService{Frontends: []Frontend{fe}, Shared: false})
	if bs := backendSet(s.Service(nn)[0]); !slices.Equal(bs, []string{"10.1.0.9:8080@home", "10.2.0.1:8080@a"}) {
		t.Errorf("backends with local shared=false: %v", bs)
	}
	ch.Take(0)
	s.RemoveCluster("a")
	if keys := takeKeys(ch); !slices.Equal(keys, []ServiceName{nn}) {
		t.Errorf("changed after removing a: %v", keys)
	}
	if bs := backendSet(s.Service(nn)[0]); !slices.Equal(bs, []string{"10.1.0.9:8080@home"}) {
		t.Errorf("backends after removing a: %v", bs)
	}
	s.DeleteLocalService(nn)
	if s.Service(nn) != nil || len(s.LocalServiceNames()) != 0 {
		t.Error("service served after its local Service went away")
	}
}

func TestSyncAndIdentityNotifications(t *testing.T) {
	s := newState(t)
	synced := s.SyncChanged()
	ids := s.SubscribeIdentities()
	nodes := s.SubscribeNodes()
	w := s.Cluster("a")
	id := protocol.Identity{ID: protocol.ComposeIdentity(2, 300, 255), Labels: protocol.K8sLabels(map[string]string{"app": "x"})}
	w.UpsertIdentity(id)
	w.UpsertNode(node("a", 2, "an", "172.18.2.1"))
	if ls, ok := s.Identity(id.ID); !ok || !ls.Equal(id.Labels) {
		t.Errorf("identity: %v %v", ls, ok)
	}
	if k := takeKeys(ids); !slices.Equal(k, []protocol.NumericIdentity{id.ID}) {
		t.Errorf("identity changes %v", k)
	}
	if k := takeKeys(nodes); !slices.Equal(k, []NodeName{{"a", "an"}}) {
		t.Errorf("node changes %v", k)
	}
	for _, k := range protocol.Kinds[:3] {
		w.Synced(k)
	}
	select {
	case <-synced:
		t.Fatal("sync signalled before every kind synced")
	default:
	}
	w.Synced(protocol.KindIPCache)
	select {
	case <-synced:
	default:
		t.Fatal("no sync signal")
	}
	if !s.EverSynced("a") {
		t.Error("EverSynced false")
	}
	sum, _ := s.Summary("a")
	if sum.Identities != 1 || sum.Nodes != 1 || sum.LastChange.IsZero() {
		t.Errorf("summary %+v", sum)
	}
}

func TestChangesCoalesce(t *testing.T) {
	c := newChanges[int]()
	now := c.epoch.Add(time.Second)
	c.add(1, now)
	c.add(1, now.Add(time.Second))
	c.add(2, now)
	select {
	case <-c.Notify():
	default:
		t.Fatal("no wake-up")
	}
	select {
	case <-c.Notify():
		t.Fatal("wake-ups did not coalesce")
	default:
	}
	keys, full := c.Take(0)
	if len(keys) != 2 || full || c.Age(keys[1], now.Add(time.Second)) != time.Second {
		t.Errorf("take: %v %v", keys, full)
	}
	c.RequestFull()
	if _, full := c.Take(0); !full {
		t.Error("full resync lost")
	}
	// Bounded takes drain a backlog in batches; requeued keys keep their
	// first stamp.
	for i := range 10 {
		c.add(i, now)
	}
	first, _ := c.Take(4)
	if len(first) != 4 || c.Pending() != 6 {
		t.Fatalf("took %d, %d left", len(first), c.Pending())
	}
	c.Requeue(first)
	c.add(99, now.Add(time.Hour))
	all, _ := c.Take(0)
	if len(all) != 11 || c.Age(all[0], now) != 0 {
		t.Errorf("after requeue: %d keys, age %v", len(all), c.Age(all[0], now))
	}
}

func TestResyncSweepsWhatWasNotSeenAgain(t *testing.T) {
	s := newState(t)
	ch := s.SubscribeIPCache()
	w := s.Cluster("a")
	for _, ip := range []string{"10.2.0.1", "10.2.0.2", "10.2.0.3"} {
		w.UpsertIPCache(ipEntry(ip, 2, 300, "172.18.2.1"))
	}
	w.UpsertIdentity(protocol.Identity{ID: protocol.ComposeIdentity(2, 300, 255), Labels: protocol.K8sLabels(map[string]string{"a": "b"})})
	w.UpsertNode(node("a", 2, "an", "172.18.2.1"))
	ch.Take(0)
	// A relist sees two pods again, one of them changed, and nothing else.
	for _, k := range protocol.Kinds {
		w.Resync(k)
	}
	w.UpsertIPCache(ipEntry("10.2.0.1", 2, 300, "172.18.2.1"))
	w.UpsertIPCache(ipEntry("10.2.0.2", 2, 301, "172.18.2.1"))
	if n := ch.Pending(); n != 1 {
		t.Errorf("%d changes from a relist with one changed value, want 1", n)
	}
	if n := w.Sweep(protocol.KindIPCache); n != 1 {
		t.Errorf("swept %d ipcache entries, want 1", n)
	}
	if n := w.Sweep(protocol.KindIdentities) + w.Sweep(protocol.KindNodes) + w.Sweep(protocol.KindServices); n != 2 {
		t.Errorf("swept %d other entries, want 2", n)
	}
	if _, ok := resolve(s, "10.2.0.3/32"); ok {
		t.Error("entry not seen again survived the sweep")
	}
	if n, _ := s.IPCacheSize(); n != 2 {
		t.Errorf("size %d, want 2", n)
	}
}

// FuzzIPCacheSize runs random operations on three clusters and checks the
// merged count kept incrementally against a full recount, and that every
// prefix resolves as the full walk says.
func FuzzIPCacheSize(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Add([]byte{1, 17, 33, 49, 2, 18, 7, 23, 6, 22, 5, 21})
	f.Fuzz(func(t *testing.T, ops []byte) {
		s := newState(t)
		clusters := []string{"home", "a", "b"}
		ids := map[string]uint32{"home": 1, "a": 2, "b": 3}
		for i := 0; i+1 < len(ops); i += 2 {
			c := clusters[int(ops[i]>>4)%3]
			w := s.Cluster(c)
			ip := fmt.Sprintf("10.0.0.%d", ops[i+1]%8)
			host := fmt.Sprintf("10.0.0.%d", ops[i+1]%4+4)
			switch ops[i] % 8 {
			case 0:
				w.UpsertIPCache(ipEntry(ip, ids[c], 300+uint32(ops[i+1]%3), host))
			case 1: // a masked entry: a /30 that covers some of the pods
				e := ipEntry(fmt.Sprintf("10.0.0.%d", ops[i+1]%2*4), ids[c], 300, host)
				e.Mask = []byte{255, 255, 255, 252}
				w.UpsertIPCache(e)
			case 2:
				w.DeleteIPCache(netip.MustParseAddr(ip))
			case 3:
				w.UpsertNode(node(c, ids[c], fmt.Sprintf("n%d", ops[i+1]%3), host))
			case 4:
				w.DeleteNode(fmt.Sprintf("n%d", ops[i+1]%3))
			case 5:
				w.Resync(protocol.KindIPCache)
			case 6:
				w.Sweep(protocol.KindIPCache)
				w.Resync(protocol.KindNodes)
				w.Sweep(protocol.KindNodes)
			case 7:
				s.RemoveCluster(c)
			}
			all := map[netip.Prefix]IPCacheEntry{}
			s.AllIPCache(func(p netip.Prefix, e IPCacheEntry) {
				if _, dup := all[p]; dup {
					t.Fatalf("AllIPCache reported %s twice", p)
				}
				all[p] = e
			})
			hosts := 0
			for p := range all {
				if p.IsSingleIP() {
					hosts++
				}
			}
			if n, h := s.IPCacheSize(); n != len(all) || h != hosts {
				t.Fatalf("after op %d: size %d (hosts %d), full walk %d (hosts %d)", i/2, n, h, len(all), hosts)
			}
			for p, e := range all {
				if got, ok := resolve(s, p.String()); !ok || got != e {
					t.Fatalf("%s resolves to %+v, walk says %+v", p, got, e)
				}
			}
		}
	})
}
