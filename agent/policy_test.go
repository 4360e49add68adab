package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent/internal/meshtest"
	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// identityKV is identity number local of cluster c, of a pod of namespace
// ns with label app.
func identityKV(c *meshtest.Cluster, local uint32, ns, app string) (protocol.NumericIdentity, meshtest.KV) {
	id := protocol.Identity{
		ID:     protocol.ComposeIdentity(c.ID, local, c.MaxConnected),
		Labels: protocol.PodSecurityLabels(c.Name, ns, "default", map[string]string{"app": app}, nil),
	}
	return id.ID, meshtest.KV{Key: protocol.IdentityKey(id.ID), Value: id.Encode()}
}

// policyMaps returns the policy map's allow entries and the enforcement
// map.
func policyMaps(m *dpmaps.Maps) (map[dpmaps.PolicyEntryKey]dpmaps.PolicyEntry, map[uint32]dpmaps.PolicyEnforcement, error) {
	entries, err := m.Policy.Dump()
	if err != nil {
		return nil, nil, err
	}
	enf, err := dpmaps.Dump[uint32, dpmaps.PolicyEnforcement](m.Enforcement.Map())
	return entries, enf, err
}

// TestAgentEnforcesPolicies runs the agent with a MeshNetworkPolicy of its
// own cluster against real mesh etcds: the policy is compiled against the
// identities of both clusters for the pods of this node, and the entries
// of a remote cluster go when its Secret entry does, while the local
// endpoint stays in default deny.
func TestAgentEnforcesPolicies(t *testing.T) {
	privileged.Require(t)
	w := newWorld(t, map[string]uint32{"east": 2})
	east := w.remotes["east"]
	ns := w.k.Namespace
	ctx := context.Background()
	if err := client.InstallCRDs(ctx, w.k.Config); err != nil {
		t.Fatal(err)
	}
	cs, err := client.NewForConfig(w.k.Config)
	if err != nil {
		t.Fatal(err)
	}

	backend, bkv := identityKV(w.home, 300, ns, "backend")
	remote, rkv := identityKV(w.home, 301, ns, "backend-elsewhere")
	frontend, fkv := identityKV(east, 300, ns, "frontend")
	_, node := w.home.Node(w.node, w.nodeIP, netip.MustParsePrefix("10.1.0.0/24"))
	_, pod := w.home.IPCache(netip.MustParseAddr("10.1.0.5"), 300, w.nodeIP)
	_, away := w.home.IPCache(netip.MustParseAddr("10.1.1.5"), 301, w.home.HostIP(1))
	w.home.PutAll([]meshtest.KV{bkv, rkv, node, pod, away})
	east.PutAll([]meshtest.KV{fkv})
	w.home.PutSynced()
	east.PutSynced()

	p := &v1alpha1.MeshNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "backend"},
		Spec: v1alpha1.MeshNetworkPolicySpec{
			// Both local identities; only backend has a pod on this node.
			EndpointSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"backend", "backend-elsewhere"},
			}}},
			Ingress: []v1alpha1.IngressRule{{
				FromEndpoints: []metav1.LabelSelector{{MatchLabels: map[string]string{"app": "frontend", protocol.LabelPolicyCluster: "east"}}},
				ToPorts:       []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{{Port: "8080", Protocol: v1alpha1.ProtocolTCP}}}},
			}},
		},
	}
	if _, err := cs.MeshNetworkPolicies(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	cfg := w.agentConfig()
	cfg.Mesh = cs
	api := w.runAgent(cfg)
	m := openMaps(t, w.mapsConfig())
	waitSynced(t, api)

	want := dpmaps.PolicyEntryKey{Direction: dpmaps.Ingress, LocalIdentity: backend, RemoteIdentity: frontend, Port: 8080, Protocol: dpmaps.ProtoTCP}
	meshtest.Eventually(t, waitTimeout, func() error {
		entries, enf, err := policyMaps(m)
		if err != nil {
			return err
		}
		if len(entries) != 1 || entries[want].Verdict != dpmaps.Allow {
			return fmt.Errorf("policy entries %v, want only %+v", entries, want)
		}
		if len(enf) != 1 || enf[uint32(backend)].Ingress != 1 {
			return fmt.Errorf("enforcement %v, want backend %d (not %d, which has no pod here) in ingress default deny", enf, backend, remote)
		}
		return nil
	})

	st, err := status(api)
	if err != nil {
		t.Fatal(err)
	}
	if p := st.Policy; p == nil || p.Policies != 1 || p.InvalidPolicies != 0 || p.NodeIdentities != 1 || p.Entries != 1 || p.EnforcedIdentities != 1 || !p.Synced {
		t.Errorf("status reports policy %+v", p)
	}

	// east leaves the mesh: its identities and so its entries go; backend
	// stays in default deny.
	meshconfig.DeleteEntry(w.secret, "east")
	w.writeSecret()
	meshtest.Eventually(t, waitTimeout, func() error {
		entries, enf, err := policyMaps(m)
		if err != nil {
			return err
		}
		if len(entries) != 0 || len(enf) != 1 || enf[uint32(backend)].Ingress != 1 {
			return fmt.Errorf("after east left: entries %v, enforcement %v", entries, enf)
		}
		return nil
	})
}
