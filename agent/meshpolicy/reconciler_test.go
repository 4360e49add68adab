package meshpolicy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/isthmus-mesh/isthmus/agent/internal/agenttest"
	"github.com/isthmus-mesh/isthmus/agent/meshpolicy"
	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

const waitTimeout = 30 * time.Second

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// world is the local cluster c1 (this node is c1-node-0) and the remote
// cluster c2 in a merged state, real pinned maps, and the test's namespace
// of a real kube-apiserver with the CRDs.
type world struct {
	t        *testing.T
	ns       string
	policies client.MeshNetworkPolicyInterface
	cs       *client.Clientset
	st       *state.State
	c1, c2   *state.ClusterWriter
	mapsCfg  dpmaps.Config
	maps     *dpmaps.Maps
	nextID   map[string]uint32
	nextIP   byte
}

const (
	thisNode  = "c1-node-0"
	otherNode = "c1-node-1"
)

var (
	thisNodeIP  = netip.MustParseAddr("172.18.1.1")
	otherNodeIP = netip.MustParseAddr("172.18.1.2")
)

func newWorld(t *testing.T) *world {
	t.Helper()
	root := agenttest.PinRoot(t) // skips under -short; needs root
	k := kube.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := client.InstallCRDs(ctx, k.Config); err != nil {
		t.Fatal(err)
	}
	cs, err := client.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.New(state.Config{LocalCluster: "c1", LocalClusterID: 1, MaxConnectedClusters: protocol.MaxConnectedClusters255, NodeName: thisNode})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{
		t: t, ns: k.Namespace, cs: cs, policies: cs.MeshNetworkPolicies(k.Namespace), st: st,
		c1: st.Cluster("c1"), c2: st.Cluster("c2"),
		mapsCfg: dpmaps.Config{
			Root: root, IPCacheMaxEntries: 1024, FrontendMaxEntries: 64, SlotMaxEntries: 256, BackendMaxEntries: 256,
			RevNATMaxEntries: 64, PolicyMaxEntries: 1024, EnforcementMaxEntries: 256, CTMaxEntries: 256, FlowRingBytes: 16 * 1024,
		},
		nextID: map[string]uint32{},
	}
	if w.maps, err = dpmaps.Open(w.mapsCfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.maps.Close() })
	for _, n := range []struct {
		name string
		ip   netip.Addr
	}{{thisNode, thisNodeIP}, {otherNode, otherNodeIP}} {
		w.c1.UpsertNode(&protocol.Node{
			Name: n.name, Cluster: "c1", ClusterID: 1,
			IPAddresses: []protocol.NodeAddress{{Type: protocol.AddressInternalIP, IP: n.ip}},
		})
	}
	return w
}

// identity adds an identity of cluster ("c1" or "c2") in the test's
// namespace with the given pod labels, and returns its ID.
func (w *world) identity(cluster string, labels ...string) protocol.NumericIdentity {
	pod := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		pod[labels[i]] = labels[i+1]
	}
	cid := uint32(1)
	cw := w.c1
	if cluster == "c2" {
		cid, cw = 2, w.c2
	}
	w.nextID[cluster]++
	id := protocol.ComposeIdentity(cid, protocol.MinLocalIdentity+w.nextID[cluster], protocol.MaxConnectedClusters255)
	cw.UpsertIdentity(protocol.Identity{ID: id, Labels: protocol.PodSecurityLabels(cluster, w.ns, "default", pod, nil)})
	return id
}

// pod adds a pod of the local cluster with identity id on the node with
// hostIP, and returns its IP.
func (w *world) pod(id protocol.NumericIdentity, hostIP netip.Addr) netip.Addr {
	w.nextIP++
	ip := netip.AddrFrom4([4]byte{10, 1, 0, w.nextIP})
	w.c1.UpsertIPCache(&protocol.IPCacheEntry{IP: ip, HostIP: hostIP, ID: id, K8sNamespace: w.ns, K8sPodName: ip.String()})
	return ip
}

func (w *world) start(cfg meshpolicy.Config) (*meshpolicy.Reconciler, *prometheus.Registry, func()) {
	w.t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Cluster, cfg.Client, cfg.Namespace, cfg.State, cfg.Maps, cfg.Registry = "c1", w.cs, w.ns, w.st, w.maps, reg
	r, err := meshpolicy.New(testLogger(), cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	w.t.Cleanup(stop)
	return r, reg, stop
}

func (w *world) create(p *v1alpha1.MeshNetworkPolicy) {
	w.t.Helper()
	if _, err := w.policies.Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		w.t.Fatalf("create %s: %v", p.Name, err)
	}
}

func (w *world) update(name string, mutate func(*v1alpha1.MeshNetworkPolicy)) {
	w.t.Helper()
	p, err := w.policies.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	mutate(p)
	if _, err := w.policies.Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		w.t.Fatalf("update %s: %v", name, err)
	}
}

// contents is what the policy maps hold.
type contents struct {
	entries map[dpmaps.PolicyEntryKey]dpmaps.PolicyEntry
	enf     map[protocol.NumericIdentity]dpmaps.Enforced
}

func (w *world) read() contents {
	w.t.Helper()
	entries, err := w.maps.Policy.Dump()
	if err != nil {
		w.t.Fatal(err)
	}
	raw, err := dpmaps.Dump[uint32, dpmaps.PolicyEnforcement](w.maps.Enforcement.Map())
	if err != nil {
		w.t.Fatal(err)
	}
	enf := map[protocol.NumericIdentity]dpmaps.Enforced{}
	for id, v := range raw {
		enf[protocol.NumericIdentity(id)] = dpmaps.Enforced{Ingress: v.Ingress != 0, Egress: v.Egress != 0}
	}
	return contents{entries, enf}
}

func (c contents) keys() []dpmaps.PolicyEntryKey {
	return slices.SortedFunc(maps.Keys(c.entries), func(a, b dpmaps.PolicyEntryKey) int {
		return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
	})
}

// waitMaps waits until the maps hold exactly the entry keys want (all
// allow) and the enforcement wantEnf, and returns them.
func (w *world) waitMaps(what string, want []dpmaps.PolicyEntryKey, wantEnf map[protocol.NumericIdentity]dpmaps.Enforced) contents {
	w.t.Helper()
	var got contents
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, waitTimeout, true, func(context.Context) (bool, error) {
		got = w.read()
		if len(got.entries) != len(want) || !maps.Equal(got.enf, wantEnf) {
			return false, nil
		}
		for _, k := range want {
			if e, ok := got.entries[k]; !ok || e.Verdict != dpmaps.Allow {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		w.t.Fatalf("%s: maps hold %v, enforcement %v; want %v, enforcement %v", what, got.keys(), got.enf, want, wantEnf)
	}
	return got
}

func (w *world) revision() uint32 {
	w.t.Helper()
	s, err := w.maps.Config.Get()
	if err != nil {
		w.t.Fatal(err)
	}
	return s.PolicyRevision
}

func ingress(local, remote protocol.NumericIdentity, port uint16, proto dpmaps.Protocol) dpmaps.PolicyEntryKey {
	return dpmaps.PolicyEntryKey{Direction: dpmaps.Ingress, LocalIdentity: local, RemoteIdentity: remote, Port: port, Protocol: proto}
}

// backendPolicy lets frontends of c2 reach backends on 8080/TCP.
func backendPolicy(ns string) *v1alpha1.MeshNetworkPolicy {
	return &v1alpha1.MeshNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "backend"},
		Spec: v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
			Ingress: []v1alpha1.IngressRule{{
				FromEndpoints: []metav1.LabelSelector{{MatchLabels: map[string]string{"app": "frontend", protocol.LabelPolicyCluster: "c2"}}},
				ToPorts:       []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{{Port: "8080", Protocol: v1alpha1.ProtocolTCP}}}},
			}},
		},
	}
}

// gauge returns the value of a gauge series with label value lv.
func gauge(t *testing.T, reg *prometheus.Registry, name, lv string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == lv {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{...=%q}", name, lv)
	return 0
}

// TestReconciler runs the Reconciler against a real kube-apiserver and
// real pinned maps: it writes nothing before the initial sync, then
// replaces what an earlier agent left with the compiled policy; it
// follows new remote identities and the node's own pods; an invalid
// update fails closed; deleting the policy restores default behaviour;
// the rule ID in the map names the policy.
func TestReconciler(t *testing.T) {
	w := newWorld(t)
	backend := w.identity("c1", "app", "backend")
	canary := w.identity("c1", "app", "backend", "track", "canary")
	other := w.identity("c1", "app", "other")
	frontend := w.identity("c2", "app", "frontend")
	w.identity("c2", "app", "backend")
	w.pod(backend, thisNodeIP)
	canaryIP := w.pod(canary, otherNodeIP) // not on this node
	w.pod(other, thisNodeIP)

	// What an earlier agent left: an entry and an enforcement no policy
	// produces any more.
	stale := ingress(other, frontend, 9090, dpmaps.ProtoTCP)
	if err := w.maps.Policy.Upsert(stale, dpmaps.PolicyEntry{Verdict: dpmaps.Allow, RuleID: 77}); err != nil {
		t.Fatal(err)
	}
	if err := w.maps.Enforcement.Set(other, dpmaps.Enforced{Egress: true}); err != nil {
		t.Fatal(err)
	}
	w.create(backendPolicy(w.ns))
	rev0 := w.revision()
	r, reg, _ := w.start(meshpolicy.Config{Debounce: time.Millisecond})

	t.Run("nothing is written before the initial sync", func(t *testing.T) {
		err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, waitTimeout, true, func(context.Context) (bool, error) {
			st := r.Stats()
			return st.Policies == 1 && st.Identities == 5 && st.NodeIdentities == 2 && st.Entries == 1, nil
		})
		if err != nil {
			t.Fatalf("the compiler never caught up: %+v", r.Stats())
		}
		got := w.read()
		if len(got.entries) != 1 || got.entries[stale].RuleID != 77 || !maps.Equal(got.enf, map[protocol.NumericIdentity]dpmaps.Enforced{other: {Egress: true}}) {
			t.Errorf("before AllowPrune the maps changed: %v, %v", got.keys(), got.enf)
		}
		if r.Stats().Synced || w.revision() != rev0 {
			t.Errorf("synced %v, revision %d (was %d)", r.Stats().Synced, w.revision(), rev0)
		}
	})

	want := []dpmaps.PolicyEntryKey{ingress(backend, frontend, 8080, dpmaps.ProtoTCP)}
	wantEnf := map[protocol.NumericIdentity]dpmaps.Enforced{backend: {Ingress: true}}
	var ruleID uint32
	t.Run("the initial sync replaces what an earlier agent left", func(t *testing.T) {
		r.AllowPrune()
		got := w.waitMaps("after the initial sync", want, wantEnf)
		ruleID = got.entries[want[0]].RuleID
		if w.revision() == rev0 {
			t.Error("the policy revision was not bumped")
		}
		if ref, ok := r.PolicyForRule(ruleID); !ok || ref.Name != "backend" || ref.Namespace != w.ns {
			t.Errorf("PolicyForRule(%d) = %v, %v", ruleID, ref, ok)
		}
		// Flow events name the policy behind their verdict.
		policyName := w.ns + "/backend"
		for _, tc := range []struct {
			what string
			ev   tunnelpolicy.FlowEvent
			want string
		}{
			{"allowed by the policy's entry", tunnelpolicy.FlowEvent{Direction: dpmaps.Ingress, Reason: tunnelpolicy.ReasonAllowedPolicy, RuleID: ruleID, SrcIdentity: frontend, DstIdentity: backend}, policyName},
			{"dropped, no entry allowed", tunnelpolicy.FlowEvent{Direction: dpmaps.Ingress, Dropped: true, Reason: tunnelpolicy.ReasonNoMatch, SrcIdentity: frontend, DstIdentity: backend}, policyName},
			{"egress of backend, unenforced", tunnelpolicy.FlowEvent{Direction: dpmaps.Egress, Reason: tunnelpolicy.ReasonAllowedUnenforced, SrcIdentity: backend, DstIdentity: frontend}, ""},
			{"dropped by the mesh-wide default deny", tunnelpolicy.FlowEvent{Direction: dpmaps.Ingress, Dropped: true, Reason: tunnelpolicy.ReasonDefaultDeny, DstIdentity: other}, ""},
		} {
			var got []string
			for _, ref := range r.FlowPolicies(tc.ev) {
				got = append(got, ref.String())
			}
			if strings.Join(got, ",") != tc.want {
				t.Errorf("%s: FlowPolicies = %v, want %q", tc.what, got, tc.want)
			}
		}
		if g := gauge(t, reg, "isthmus_agent_policies", "accepted"); g != 1 {
			t.Errorf("accepted policies = %v", g)
		}
		if g := gauge(t, reg, "isthmus_agent_policy_map_entries", dpmaps.NamePolicy); g != 1 {
			t.Errorf("policy entries = %v", g)
		}
		if g := gauge(t, reg, "isthmus_agent_policy_identities", "node"); g != 2 {
			t.Errorf("node identities = %v", g)
		}
	})

	t.Run("a new remote identity gets its entry", func(t *testing.T) {
		fe2 := w.identity("c2", "app", "frontend", "version", "2")
		want = append(want, ingress(backend, fe2, 8080, dpmaps.ProtoTCP))
		w.waitMaps("after a new frontend identity", want, wantEnf)
	})

	t.Run("a local identity gets entries once it has a pod on this node", func(t *testing.T) {
		ip := w.pod(canary, thisNodeIP)
		withCanary := append(slices.Clone(want), ingress(canary, frontend, 8080, dpmaps.ProtoTCP), ingress(canary, want[1].RemoteIdentity, 8080, dpmaps.ProtoTCP))
		enfCanary := map[protocol.NumericIdentity]dpmaps.Enforced{backend: {Ingress: true}, canary: {Ingress: true}}
		w.waitMaps("with a canary pod on this node", withCanary, enfCanary)
		// It keeps them while any of its pods is here.
		w.c1.DeleteIPCache(canaryIP)
		w.waitMaps("with a canary pod gone from the other node", withCanary, enfCanary)
		w.c1.DeleteIPCache(ip)
		w.waitMaps("with no canary pod on this node", want, wantEnf)
	})

	t.Run("an invalid update fails closed", func(t *testing.T) {
		w.update("backend", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].FromEndpoints[0].MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Equals", Values: []string{"x"}}}
		})
		w.waitMaps("after an invalid update", nil, wantEnf)
		if g := gauge(t, reg, "isthmus_agent_policies", "invalid"); g != 1 {
			t.Errorf("invalid policies = %v", g)
		}
	})

	t.Run("deleting the policy restores default behaviour", func(t *testing.T) {
		if err := w.policies.Delete(context.Background(), "backend", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		w.waitMaps("after delete", nil, map[protocol.NumericIdentity]dpmaps.Enforced{})
		if _, ok := r.PolicyForRule(ruleID); ok {
			t.Errorf("PolicyForRule(%d) still names a policy", ruleID)
		}
	})
}

// TestRestart checks that a restarted agent neither flushes the maps nor
// rewrites them: until its initial sync it leaves them alone, and then it
// finds them current and writes nothing, not even a revision bump. It
// also checks the mesh-wide default deny setting.
func TestRestart(t *testing.T) {
	w := newWorld(t)
	backend := w.identity("c1", "app", "backend")
	frontend := w.identity("c2", "app", "frontend")
	w.pod(backend, thisNodeIP)
	w.create(backendPolicy(w.ns))
	want := []dpmaps.PolicyEntryKey{ingress(backend, frontend, 8080, dpmaps.ProtoTCP)}
	wantEnf := map[protocol.NumericIdentity]dpmaps.Enforced{backend: {Ingress: true}}

	first, _, stop := w.start(meshpolicy.Config{Debounce: time.Millisecond, DefaultDeny: true})
	first.AllowPrune()
	before := w.waitMaps("first agent", want, wantEnf)
	if s, _ := w.maps.Config.Get(); !s.DefaultDeny {
		t.Error("DefaultDeny is not set in the mesh config")
	}
	stop()

	rev := w.revision()
	second, _, _ := w.start(meshpolicy.Config{Debounce: time.Millisecond})
	if s, _ := w.maps.Config.Get(); s.DefaultDeny {
		t.Error("DefaultDeny is still set after a start without it")
	}
	if w.revision() != rev+1 {
		t.Errorf("revision %d after turning default deny off, want %d", w.revision(), rev+1)
	}
	rev = w.revision()
	second.AllowPrune()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, waitTimeout, true, func(context.Context) (bool, error) {
		return second.Stats().Synced, nil
	})
	if err != nil {
		t.Fatal("the second agent never synced")
	}
	after := w.read()
	if !maps.Equal(after.entries, before.entries) || !maps.Equal(after.enf, before.enf) {
		t.Errorf("after the restart: %v %v, before %v %v", after.keys(), after.enf, before.keys(), before.enf)
	}
	if w.revision() != rev {
		t.Errorf("a restart that changed nothing bumped the revision from %d to %d", rev, w.revision())
	}
}
