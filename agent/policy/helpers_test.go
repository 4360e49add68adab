package policy

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

const (
	labelCluster = protocol.LabelPolicyCluster
	labelNS      = protocol.LabelPodNamespace
)

// testIdentity is an identity with a name tests can refer to.
type testIdentity struct {
	name   string
	id     protocol.NumericIdentity
	labels protocol.Labels
}

// mesh is a set of named identities across clusters c1 (ID 1, the local
// one), c2 and c3.
type mesh struct {
	byName map[string]testIdentity
	order  []string
	next   map[string]uint32
}

// clusterID returns the ID of test cluster "c<N>": N.
func clusterID(name string) (uint32, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(name, "c"))
	if err != nil || !strings.HasPrefix(name, "c") || n < 1 || n > 255 {
		return 0, false
	}
	return uint32(n), true
}

func newMesh() *mesh {
	return &mesh{byName: map[string]testIdentity{}, next: map[string]uint32{}}
}

// add names an identity "cluster/namespace/app" (plus extra labels) and
// returns it.
func (m *mesh) add(t testing.TB, cluster, ns, app string, extra ...string) testIdentity {
	t.Helper()
	pod := map[string]string{"app": app}
	for i := 0; i+1 < len(extra); i += 2 {
		pod[extra[i]] = extra[i+1]
	}
	name := cluster + "/" + ns + "/" + app
	if len(extra) > 0 {
		name += "/" + strings.Join(extra, "=")
	}
	if _, dup := m.byName[name]; dup {
		t.Fatalf("identity %s twice", name)
	}
	cid, ok := clusterID(cluster)
	if !ok {
		t.Fatalf("unknown cluster %s", cluster)
	}
	local := protocol.MinLocalIdentity + m.next[cluster]
	m.next[cluster]++
	ti := testIdentity{
		name:   name,
		id:     protocol.ComposeIdentity(cid, local, protocol.MaxConnectedClusters255),
		labels: protocol.PodSecurityLabels(cluster, ns, "default", pod, map[string]string{"team": ns}),
	}
	m.byName[name] = ti
	m.order = append(m.order, name)
	return ti
}

func (m *mesh) id(t testing.TB, name string) protocol.NumericIdentity {
	t.Helper()
	ti, ok := m.byName[name]
	if !ok {
		t.Fatalf("no identity %s", name)
	}
	return ti.id
}

func (m *mesh) ids(t testing.TB, names ...string) []protocol.NumericIdentity {
	t.Helper()
	out := make([]protocol.NumericIdentity, 0, len(names))
	for _, n := range names {
		out = append(out, m.id(t, n))
	}
	return out
}

func (m *mesh) nameOf(id protocol.NumericIdentity) string {
	for _, ti := range m.byName {
		if ti.id == id {
			return ti.name
		}
	}
	return fmt.Sprintf("#%d", id)
}

func (m *mesh) feed(c *Compiler) {
	for _, n := range m.order {
		ti := m.byName[n]
		c.UpsertIdentity(ti.id, ti.labels)
	}
}

// standardMesh: namespace shop in every cluster with frontend and backend,
// namespace other in c1 and c2 with frontend, monitoring with prometheus.
func standardMesh(t testing.TB) *mesh {
	m := newMesh()
	for _, c := range []string{"c1", "c2", "c3"} {
		m.add(t, c, "shop", "frontend")
		m.add(t, c, "shop", "backend")
	}
	m.add(t, "c1", "other", "frontend")
	m.add(t, "c2", "other", "frontend")
	m.add(t, "c2", "monitoring", "prometheus")
	return m
}

func newCompiler(t testing.TB, cfg Config) *Compiler {
	t.Helper()
	if cfg.Cluster == "" {
		cfg.Cluster = "c1"
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Policy builders.

func mnp(ns, name string, spec v1alpha1.MeshNetworkPolicySpec) *v1alpha1.MeshNetworkPolicy {
	return &v1alpha1.MeshNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec:       spec,
	}
}

// sel builds a selector from key, value pairs and requirements.
func sel(kv ...string) metav1.LabelSelector {
	s := metav1.LabelSelector{}
	for i := 0; i+1 < len(kv); i += 2 {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func withExpr(s metav1.LabelSelector, key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelector {
	s.MatchExpressions = append(s.MatchExpressions, metav1.LabelSelectorRequirement{Key: key, Operator: op, Values: values})
	return s
}

// ports builds one PortRule from "port/proto" strings ("8080/TCP", "53",
// "/UDP" for every UDP port).
func ports(specs ...string) []v1alpha1.PortRule {
	pr := v1alpha1.PortRule{}
	for _, s := range specs {
		port, proto, _ := strings.Cut(s, "/")
		pr.Ports = append(pr.Ports, v1alpha1.PortProtocol{Port: port, Protocol: v1alpha1.Protocol(proto)})
	}
	return []v1alpha1.PortRule{pr}
}

func ingressFrom(peers []metav1.LabelSelector, toPorts []v1alpha1.PortRule) v1alpha1.IngressRule {
	return v1alpha1.IngressRule{FromEndpoints: peers, ToPorts: toPorts}
}

func egressTo(peers []metav1.LabelSelector, toPorts []v1alpha1.PortRule) v1alpha1.EgressRule {
	return v1alpha1.EgressRule{ToEndpoints: peers, ToPorts: toPorts}
}

func peers(s ...metav1.LabelSelector) []metav1.LabelSelector { return s }

// key builds an entry key.
func key(dir maps.Direction, local, remote protocol.NumericIdentity, port uint16, proto maps.Protocol) maps.PolicyEntryKey {
	return maps.PolicyEntryKey{Direction: dir, LocalIdentity: local, RemoteIdentity: remote, Port: port, Protocol: proto}
}

func (m *mesh) describe(k maps.PolicyEntryKey) string {
	remote := "any"
	if k.RemoteIdentity != 0 {
		remote = m.nameOf(k.RemoteIdentity)
	}
	return fmt.Sprintf("%s %s<->%s %s/%s", k.Direction, m.nameOf(k.LocalIdentity), remote, strconv.Itoa(int(k.Port)), k.Protocol)
}

// wantEntries compares the compiler's entries (keys only) with want. It
// reads them with Snapshot, which restarts change tracking.
func wantEntries(t *testing.T, m *mesh, c *Compiler, want ...maps.PolicyEntryKey) map[maps.PolicyEntryKey]maps.PolicyEntry {
	t.Helper()
	got, _ := c.Snapshot()
	wantSet := map[maps.PolicyEntryKey]bool{}
	for _, k := range want {
		wantSet[k] = true
	}
	for k := range got {
		if !wantSet[k] {
			t.Errorf("unexpected entry %s", m.describe(k))
		}
	}
	for k := range wantSet {
		if _, ok := got[k]; !ok {
			t.Errorf("missing entry %s", m.describe(k))
		}
	}
	return got
}
