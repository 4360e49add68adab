package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent/agentcmd"
	"github.com/isthmus-mesh/isthmus/agent/internal/meshtest"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// pods publishes n pods of cluster c on its nodes and returns their IPs.
func pods(c *meshtest.Cluster, n int) []netip.Addr {
	var kvs []meshtest.KV
	var ips []netip.Addr
	for i := range 10 {
		_, kv := c.Identity(uint32(256+i), fmt.Sprintf("app%d", i))
		kvs = append(kvs, kv)
	}
	for i := range n {
		ip := c.PodIP(i)
		_, kv := c.IPCache(ip, uint32(256+i%10), c.HostIP(i%3))
		kvs = append(kvs, kv)
		ips = append(ips, ip)
	}
	for i := range 3 {
		_, kv := c.Node(c.NodeName(i), c.HostIP(i), netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(c.ID), byte(i), 0}), 24))
		kvs = append(kvs, kv)
	}
	c.PutAll(kvs)
	return ips
}

func host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// ipcacheHas checks the map holds each prefix with the cluster ID, and
// none of the absent ones.
func ipcacheHas(m *dpmaps.Maps, present map[netip.Prefix]uint16, absent []netip.Prefix) error {
	d, err := m.IPCache.Dump()
	if err != nil {
		return err
	}
	for p, cid := range present {
		e, ok := d[p]
		if !ok {
			return fmt.Errorf("%s missing from the ipcache map", p)
		}
		if e.ClusterID != cid {
			return fmt.Errorf("%s has cluster ID %d, want %d", p, e.ClusterID, cid)
		}
	}
	for _, p := range absent {
		if _, ok := d[p]; ok {
			return fmt.Errorf("%s still in the ipcache map", p)
		}
	}
	return nil
}

func serviceBackends(m *dpmaps.Maps, fe dpmaps.Frontend) ([]string, dpmaps.Affinity, error) {
	svcs, err := m.Services.Dump()
	if err != nil {
		return nil, 0, err
	}
	for _, s := range svcs {
		if s.Frontend == fe {
			var out []string
			for _, b := range s.Backends {
				out = append(out, fmt.Sprintf("%s:%d@%d/%v", b.Addr, b.Port, b.ClusterID, b.Local))
			}
			slices.Sort(out)
			return out, s.Affinity, nil
		}
	}
	return nil, 0, fmt.Errorf("no service at %v", fe)
}

// TestAgentProgramsMapsFromEveryCluster runs the agent against a real
// kube-apiserver and three real mesh etcds (its own cluster included) and
// checks the pinned maps follow what each cluster publishes, that removing
// a Secret entry withdraws exactly that cluster, and that bpftool reads the
// maps.
func TestAgentProgramsMapsFromEveryCluster(t *testing.T) {
	privileged.Require(t)
	w := newWorld(t, map[string]uint32{"east": 2, "west": 3})
	east, west := w.remotes["east"], w.remotes["west"]
	homeIPs, eastIPs, westIPs := pods(w.home, 20), pods(east, 30), pods(west, 40)

	echo := w.globalService("echo", map[string]string{meshconfig.ServiceAffinityAnnotation: meshconfig.AffinityLocal})
	solo := w.globalService("solo", map[string]string{meshconfig.CiliumServiceSharedAnnotation: "false"})
	w.globalService("broken", map[string]string{meshconfig.ServiceAffinityAnnotation: "closest"})
	ns := w.k.Namespace
	vip := netip.MustParseAddr(echo.Spec.ClusterIP)
	_, kv := w.home.Service(ns, "echo", vip, 80, 8080, homeIPs[0])
	w.home.Put(kv.Key, kv.Value)
	_, kv = east.Service(ns, "echo", netip.MustParseAddr("10.96.200.1"), 80, 8080, eastIPs[0], eastIPs[1])
	east.Put(kv.Key, kv.Value)
	_, kv = west.Service(ns, "echo", netip.MustParseAddr("10.96.200.2"), 80, 8080, westIPs[0])
	west.Put(kv.Key, kv.Value)
	_, kv = east.Service(ns, "solo", netip.MustParseAddr("10.96.200.3"), 80, 8080, eastIPs[2])
	east.Put(kv.Key, kv.Value)
	// solo is not shared locally, so its local backends come from its
	// EndpointSlice (a controller would write it; the test does).
	ready := true
	_, err := w.k.Client.DiscoveryV1().EndpointSlices(ns).Create(context.Background(), &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "solo-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "solo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.9.9"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*meshtest.Cluster{w.home, east, west} {
		c.PutSynced()
	}

	cfg := w.agentConfig()
	api := w.runAgent(cfg)
	m := openMaps(t, w.mapsConfig())
	waitSynced(t, api)

	want := map[netip.Prefix]uint16{}
	for cid, ips := range map[uint16][]netip.Addr{1: homeIPs, 2: eastIPs, 3: westIPs} {
		for _, ip := range ips {
			want[host(ip)] = cid
		}
	}
	for _, c := range []*meshtest.Cluster{w.home, east, west} {
		for i := range 3 { // node addresses too
			want[host(c.HostIP(i))] = uint16(c.ID)
		}
	}
	meshtest.Eventually(t, waitTimeout, func() error { return ipcacheHas(m, want, nil) })
	if e, _, _ := m.IPCache.Lookup(homeIPs[0]); e.Flags&dpmaps.IPCacheFlagLocalNode == 0 || e.TunnelEndpoint != w.nodeIP {
		t.Errorf("pod on this node: %+v", e)
	}
	if e, _, _ := m.IPCache.Lookup(west.HostIP(1)); e.Identity != protocol.IdentityRemoteNode || e.Flags != dpmaps.IPCacheFlagNode {
		t.Errorf("remote node address: %+v", e)
	}
	fe := dpmaps.Frontend{Addr: vip, Port: 80, Protocol: dpmaps.ProtoTCP}
	wantEcho := []string{
		fmt.Sprintf("%s:8080@1/true", homeIPs[0]),
		fmt.Sprintf("%s:8080@2/false", eastIPs[0]), fmt.Sprintf("%s:8080@2/false", eastIPs[1]),
		fmt.Sprintf("%s:8080@3/false", westIPs[0]),
	}
	slices.Sort(wantEcho)
	meshtest.Eventually(t, waitTimeout, func() error {
		got, aff, err := serviceBackends(m, fe)
		if err != nil {
			return err
		}
		if !slices.Equal(got, wantEcho) || aff != dpmaps.AffinityLocal {
			return fmt.Errorf("echo backends %v affinity %s, want %v local", got, aff, wantEcho)
		}
		soloFE := dpmaps.Frontend{Addr: netip.MustParseAddr(solo.Spec.ClusterIP), Port: 80, Protocol: dpmaps.ProtoTCP}
		got, _, err = serviceBackends(m, soloFE)
		if err != nil {
			return err
		}
		if wantSolo := []string{"10.1.9.9:8080@1/true", fmt.Sprintf("%s:8080@2/false", eastIPs[2])}; !slices.Equal(got, wantSolo) {
			return fmt.Errorf("solo backends %v, want %v", got, wantSolo)
		}
		return nil
	})

	// A bad annotation is reported as an Event on the Service.
	meshtest.Eventually(t, waitTimeout, func() error {
		evs, err := w.k.Client.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.Regarding.Name == "broken" && ev.Reason == "InvalidMeshAnnotation" && strings.Contains(ev.Note, `"closest"`) {
				return nil
			}
		}
		return fmt.Errorf("no InvalidMeshAnnotation Event for Service broken among %d events", len(evs.Items))
	})

	// Entries change and disappear with the remote state.
	e, kv := east.IPCache(eastIPs[5], 999, east.HostIP(2))
	east.Put(kv.Key, kv.Value)
	east.Delete(protocol.IPCacheKey(eastIPs[6]))
	west.Delete(protocol.NodeKey("west", west.NodeName(2)))
	east.Delete(protocol.ServiceKey("east", ns, "echo"))
	meshtest.Eventually(t, waitTimeout, func() error {
		got, _, _ := m.IPCache.Lookup(e.IP)
		if got.Identity != e.ID || got.TunnelEndpoint != east.HostIP(2) {
			return fmt.Errorf("changed entry: %+v", got)
		}
		if err := ipcacheHas(m, nil, []netip.Prefix{host(eastIPs[6]), host(west.HostIP(2))}); err != nil {
			return err
		}
		got2, _, err := serviceBackends(m, fe)
		if err != nil {
			return err
		}
		if len(got2) != 2 {
			return fmt.Errorf("echo backends after east withdrew its export: %v", got2)
		}
		return nil
	})
	delete(want, host(eastIPs[6]))
	delete(want, host(west.HostIP(2)))

	// Status, through the API and the command line.
	st, err := status(api)
	if err != nil {
		t.Fatal(err)
	}
	if c := clusterOf(st, "east"); c == nil || c.State != "ready" || c.ClusterId != 2 || !c.Connected {
		t.Errorf("east status: %v", c)
	}
	var out bytes.Buffer
	cmd := agentcmd.NewCommand(&out, &out)
	cmd.SetArgs([]string{"status", "--api-socket", cfg.APISocket, "-o", "json"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("isthmus-agent status: %v\n%s", err, out.String())
	}
	var js struct {
		Clusters []struct{ Name, State string }
	}
	if err := json.Unmarshal(out.Bytes(), &js); err != nil || len(js.Clusters) != 3 {
		t.Errorf("status -o json: %v\n%s", err, out.String())
	}

	// bpftool reads the pinned maps, by field name (every entry here is a
	// host entry, so all live in the iphosts hash).
	bpftoolHas(t, filepath.Join(w.pinRoot, dpmaps.NameIPHosts), len(want), e.IP, e.ID)

	// Removing west from the Secret withdraws exactly west's entries.
	meshconfig.DeleteEntry(w.secret, "west")
	w.writeSecret()
	var gone []netip.Prefix
	for p, cid := range want {
		if cid == 3 {
			gone = append(gone, p)
			delete(want, p)
		}
	}
	meshtest.Eventually(t, waitTimeout, func() error {
		if err := ipcacheHas(m, want, gone); err != nil {
			return err
		}
		got, _, err := serviceBackends(m, fe)
		if err != nil {
			return err
		}
		if len(got) != 1 {
			return fmt.Errorf("echo backends after west left: %v", got)
		}
		return nil
	})
	d, err := m.IPCache.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(d) != len(want) {
		t.Errorf("ipcache has %d entries after west left, want %d", len(d), len(want))
	}
}

func ptr[T any](v T) *T { return &v }

// bpftoolHas checks `bpftool map dump pinned` reads an ipcache map with its
// BTF field names, sees n entries, and shows ip with identity id.
func bpftoolHas(t *testing.T, pin string, n int, ip netip.Addr, id protocol.NumericIdentity) {
	t.Helper()
	path, err := exec.LookPath("bpftool")
	if err != nil {
		privileged.Unavailable(t, "bpftool is not installed")
	}
	out, err := exec.Command(path, "-j", "map", "dump", "pinned", pin).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool map dump pinned %s: %v\n%s", pin, err, out)
	}
	var entries []struct {
		Formatted struct {
			Key struct {
				Prefixlen int
				Family    int
				Addr      []byte
			}
			Value struct {
				Identity  uint32
				ClusterID uint16 `json:"cluster_id"`
			}
		}
	}
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("bpftool output: %v\n%.2000s", err, out)
	}
	if len(entries) != n {
		t.Errorf("bpftool sees %d entries, want %d", len(entries), n)
	}
	a4 := ip.As4()
	for _, e := range entries {
		k := e.Formatted.Key
		if k.Family == 4 && k.Prefixlen == 64 && len(k.Addr) >= 4 && [4]byte(k.Addr[:4]) == a4 {
			if e.Formatted.Value.Identity != uint32(id) {
				t.Errorf("bpftool shows %s with identity %d, want %d", ip, e.Formatted.Value.Identity, id)
			}
			return
		}
	}
	t.Errorf("bpftool output has no entry for %s (BTF field names missing?):\n%.1000s", ip, out)
}

// TestAgentUsesChangedSecretEntry rotates a cluster's client certificate
// in the Secret: the agent reconnects with the new one at once and keeps
// the cluster's entries throughout.
func TestAgentUsesChangedSecretEntry(t *testing.T) {
	privileged.Require(t)
	w := newWorld(t, map[string]uint32{"east": 2})
	east := w.remotes["east"]
	eastIPs := pods(east, 5)
	w.home.PutSynced()
	east.PutSynced()
	api := w.runAgent(w.agentConfig())
	waitSynced(t, api)
	m := openMaps(t, w.mapsConfig())
	want := map[netip.Prefix]uint16{host(eastIPs[0]): 2, host(eastIPs[4]): 2}
	meshtest.Eventually(t, waitTimeout, func() error { return ipcacheHas(m, want, nil) })
	st, err := status(api)
	if err != nil {
		t.Fatal(err)
	}
	before := clusterOf(st, "east").Connections

	w.putEntry(east, protocol.RemoteUser) // a fresh certificate
	w.writeSecret()
	meshtest.Eventually(t, waitTimeout, func() error {
		st, err := status(api)
		if err != nil {
			return err
		}
		if c := clusterOf(st, "east"); c.Connections <= before || c.State != "ready" {
			return fmt.Errorf("east: %d connections (was %d), %s", c.Connections, before, c.State)
		}
		return nil
	})
	if err := ipcacheHas(m, want, nil); err != nil {
		t.Error(err)
	}
	// The new connection follows the remote as before.
	e, kv := east.IPCache(east.PodIP(100), 300, east.HostIP(0))
	east.Put(kv.Key, kv.Value)
	meshtest.Eventually(t, waitTimeout, func() error { return ipcacheHas(m, map[netip.Prefix]uint16{host(e.IP): 2}, nil) })

	// An unusable entry is reported; one that becomes unusable keeps the
	// connection it has rather than cutting the cluster off.
	w.secret["bad"] = []byte("endpoints: [https://127.0.0.1:1]\n")
	delete(w.secret, "east.etcd-client.key")
	w.writeSecret()
	meshtest.Eventually(t, waitTimeout, func() error {
		st, err := status(api)
		if err != nil {
			return err
		}
		if !strings.Contains(st.InvalidEntries["bad"], "trusted-ca-file") || !strings.Contains(st.InvalidEntries["east"], "key-file") {
			return fmt.Errorf("invalid entries: %v", st.InvalidEntries)
		}
		if c := clusterOf(st, "east"); c == nil || c.State != "ready" {
			return fmt.Errorf("east: %v", c)
		}
		return nil
	})
	if err := ipcacheHas(m, want, nil); err != nil {
		t.Error(err)
	}
}

// TestAgentRefusesDuplicateClusterID checks a cluster announcing an ID
// another cluster holds is refused, reported in the status and metrics,
// and contributes nothing to the maps, while the others are undisturbed.
func TestAgentRefusesDuplicateClusterID(t *testing.T) {
	privileged.Require(t)
	w := newWorld(t, map[string]uint32{"east": 2})
	eastIPs := pods(w.remotes["east"], 5)
	w.home.PutSynced()
	w.remotes["east"].PutSynced()
	cfg := w.agentConfig()
	api := w.runAgent(cfg)
	m := openMaps(t, w.mapsConfig())
	waitSynced(t, api)
	meshtest.Eventually(t, waitTimeout, func() error {
		return ipcacheHas(m, map[netip.Prefix]uint16{host(eastIPs[0]): 2}, nil)
	})

	dup := meshtest.StartCluster(t, "dup", 2)
	dup.Heartbeat(200 * time.Millisecond)
	// Its pods use addresses of their own, so that any leak would show.
	dupIP := netip.MustParseAddr("10.222.0.1")
	_, kv := dup.IPCache(dupIP, 300, dup.HostIP(0))
	dup.Put(kv.Key, kv.Value)
	dup.PutSynced()
	w.putEntry(dup, protocol.RemoteUser)
	w.writeSecret()
	meshtest.Eventually(t, waitTimeout, func() error {
		st, err := status(api)
		if err != nil {
			return err
		}
		c := clusterOf(st, "dup")
		if c == nil || c.State != "refused" {
			return fmt.Errorf("dup: %v", c)
		}
		if !strings.Contains(c.LastError, "cluster ID 2") || !strings.Contains(c.LastError, `"east"`) {
			return fmt.Errorf("refusal does not say what conflicts: %q", c.LastError)
		}
		return nil
	})
	if v := metricValue(t, w, "isthmus_agent_remote_cluster_state", map[string]string{"cluster": "dup", "state": "refused"}); v != 1 {
		t.Errorf("refused state metric = %v", v)
	}
	if err := ipcacheHas(m, map[netip.Prefix]uint16{host(eastIPs[0]): 2}, []netip.Prefix{host(dupIP)}); err != nil {
		t.Error(err)
	}
	st, _ := status(api)
	if c := clusterOf(st, "east"); c.State != "ready" {
		t.Errorf("east disturbed by dup: %v", c)
	}
}

// metricValue returns the value of one series from the agent's registry.
func metricValue(t testing.TB, w *world, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := w.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metrics
				}
			}
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}
