package policy

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// openTestMaps creates the datapath maps, small, under a bpffs directory
// of their own that is removed at the end.
func openTestMaps(t *testing.T) *maps.Maps {
	t.Helper()
	privileged.Require(t)
	const bpffs = "/sys/fs/bpf"
	if _, err := os.Stat(bpffs); err != nil {
		privileged.Unavailable(t, "no bpffs at "+bpffs)
	}
	suffix := make([]byte, 4)
	rand.Read(suffix)
	root := filepath.Join(bpffs, "isthmus-policy-test-"+hex.EncodeToString(suffix))
	t.Cleanup(func() {
		if err := os.RemoveAll(root); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	m, err := maps.Open(maps.Config{
		Root:                  root,
		IPCacheMaxEntries:     64,
		FrontendMaxEntries:    64,
		SlotMaxEntries:        64,
		BackendMaxEntries:     64,
		RevNATMaxEntries:      64,
		PolicyMaxEntries:      1024,
		EnforcementMaxEntries: 64,
		CTMaxEntries:          64,
		FlowRingBytes:         16 * 1024,
	})
	if err != nil {
		t.Fatalf("open maps: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestApplyToBPFMaps writes the compiler's output into real BPF maps, first
// with a full reconcile and then with incremental changes, and checks the
// maps hold exactly the desired state each time.
func TestApplyToBPFMaps(t *testing.T) {
	m := openTestMaps(t)
	mesh := standardMesh(t)
	c := newCompiler(t, Config{})
	mesh.feed(c)
	backend := mnp("shop", "backend", v1alpha1.MeshNetworkPolicySpec{
		EndpointSelector: sel("app", "backend"),
		Ingress:          []v1alpha1.IngressRule{ingressFrom(peers(withExpr(sel("app", "frontend"), labelCluster, exists)), ports("8080/TCP", "53"))},
		Egress:           []v1alpha1.EgressRule{egressTo(nil, ports("443/TCP"))},
	})
	if err := c.UpsertPolicy(backend); err != nil {
		t.Fatal(err)
	}
	entries, enf := c.Snapshot()
	if _, err := m.Policy.Reconcile(entries); err != nil {
		t.Fatalf("reconcile policy: %v", err)
	}
	if _, err := m.Enforcement.Reconcile(enf); err != nil {
		t.Fatalf("reconcile enforcement: %v", err)
	}
	checkMaps(t, m, c)

	// Changes: a new remote frontend, a second policy, a relabelled
	// identity, then the first policy goes.
	v2 := mesh.add(t, "c3", "shop", "frontend", "version", "v2")
	c.UpsertIdentity(v2.id, v2.labels)
	if err := c.UpsertPolicy(mnp("shop", "frontend", v1alpha1.MeshNetworkPolicySpec{
		EndpointSelector: sel("app", "frontend"),
		Egress:           []v1alpha1.EgressRule{egressTo(peers(sel("app", "backend", labelCluster, "c2")), nil)},
	})); err != nil {
		t.Fatal(err)
	}
	apply(t, m, c)
	checkMaps(t, m, c)

	fe2 := mesh.byName["c2/shop/frontend"]
	c.UpsertIdentity(fe2.id, protocol.PodSecurityLabels("c2", "shop", "default", map[string]string{"app": "db"}, nil))
	c.DeletePolicy("shop", "backend")
	apply(t, m, c)
	checkMaps(t, m, c)
}

func apply(t *testing.T, m *maps.Maps, c *Compiler) {
	t.Helper()
	ch := c.TakeChanges()
	if ch.Empty() {
		t.Fatal("expected changes")
	}
	if err := ch.Apply(m.Policy, m.Enforcement); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

// checkMaps compares the maps with the compiler's desired state. Snapshot
// restarts change tracking, which is fine here: every change was applied.
func checkMaps(t *testing.T, m *maps.Maps, c *Compiler) {
	t.Helper()
	want, wantEnf := c.Snapshot()
	got, err := m.Policy.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 {
		t.Fatal("test needs a non-empty policy map")
	}
	if !mapsEqual(got, want) {
		t.Errorf("policy map holds %d entries, want %d:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	rawEnf, err := maps.Dump[uint32, maps.PolicyEnforcement](m.Enforcement.Map())
	if err != nil {
		t.Fatal(err)
	}
	gotEnf := map[protocol.NumericIdentity]maps.Enforced{}
	for id, e := range rawEnf {
		gotEnf[protocol.NumericIdentity(id)] = maps.Enforced{Ingress: e.Ingress != 0, Egress: e.Egress != 0}
	}
	if !mapsEqual(gotEnf, wantEnf) {
		t.Errorf("enforcement map %v, want %v", gotEnf, wantEnf)
	}
}
