package client

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

func validPolicy(namespace, name string) *v1alpha1.MeshNetworkPolicy {
	return &v1alpha1.MeshNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
			Ingress: []v1alpha1.IngressRule{{
				FromEndpoints: []metav1.LabelSelector{{
					MatchLabels: map[string]string{"app": "frontend"},
					MatchExpressions: []metav1.LabelSelectorRequirement{{
						Key: "io.cilium.k8s.policy.cluster", Operator: metav1.LabelSelectorOpIn, Values: []string{"cluster2"},
					}},
				}},
				ToPorts: []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{{Port: "8080", Protocol: v1alpha1.ProtocolTCP}, {Port: "53"}}}},
			}},
			Egress: []v1alpha1.EgressRule{{ToPorts: []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{{Protocol: v1alpha1.ProtocolUDP}}}}}},
		},
	}
}

// TestCRDsOnAPIServer installs the shipped CRDs into a real kube-apiserver
// and checks what users will meet: OpenAPI and CEL validation refusing bad
// MeshNetworkPolicies with clear messages, defaulting, the status
// subresource, printer columns, and the typed client and informer. (Peer
// selectors are validated after admission, by apis/v1alpha1/validation;
// the mesh apiserver reports them in the Accepted condition.)
func TestCRDsOnAPIServer(t *testing.T) {
	k := kube.Kube(t) // skips under -short
	cfg, ns := k.Config, k.Namespace
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for range 2 { // installing is idempotent
		if err := InstallCRDs(ctx, cfg); err != nil {
			t.Fatalf("InstallCRDs: %v", err)
		}
	}
	cs, err := NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	policies := cs.MeshNetworkPolicies(ns)

	t.Run("valid policy is accepted and defaulted", func(t *testing.T) {
		got, err := policies.Create(ctx, validPolicy(ns, "good"), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create a valid policy: %v", err)
		}
		if p := got.Spec.Ingress[0].ToPorts[0].Ports[1].Protocol; p != v1alpha1.ProtocolAny {
			t.Errorf("protocol defaulted to %q, want ANY", p)
		}
		if got.Generation != 1 {
			t.Errorf("generation %d", got.Generation)
		}
	})

	invalid := []struct {
		name    string
		mutate  func(p *v1alpha1.MeshNetworkPolicy)
		message string
	}{
		{"named port", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].ToPorts[0].Ports[0].Port = "http"
		}, "named ports are not supported: give the port number (1-65535)"},
		{"port 0", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].ToPorts[0].Ports[0].Port = "0"
		}, "port must be a number from 1 to 65535"},
		{"port 65536", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].ToPorts[0].Ports[0].Port = "65536"
		}, "port must be a number from 1 to 65535"},
		{"huge port", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].ToPorts[0].Ports[0].Port = "99999999999999"
		}, "port must be a number from 1 to 65535"},
		{"unknown protocol", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].ToPorts[0].Ports[0].Protocol = "ICMP"
		}, `Unsupported value: "ICMP"`},
		{"no ports in a port rule", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].ToPorts[0].Ports = nil
		}, "spec.ingress[0].toPorts[0].ports: Required value"},
		{"bad operator in the endpointSelector", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.EndpointSelector.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Equals", Values: []string{"x"}}}
		}, "spec.endpointSelector: Invalid value: matchExpressions operator must be one of In, NotIn, Exists, DoesNotExist"},
		{"In without values in the endpointSelector", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.EndpointSelector.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn}}
		}, "matchExpressions with operator In or NotIn need values; Exists and DoesNotExist take none"},
		{"Exists with values in the endpointSelector", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.EndpointSelector.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpExists, Values: []string{"x"}}}
		}, "matchExpressions with operator In or NotIn need values; Exists and DoesNotExist take none"},
		// CiliumNetworkPolicy fields MeshNetworkPolicy does not support are
		// refused, not pruned: pruned, fromCIDR would leave a rule that
		// allows any peer on its ports.
		{"fromCIDR", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].FromEndpoints = nil
			p.Spec.Ingress[0].FromCIDR = []string{"10.0.0.0/8"}
		}, "spec.ingress[0].fromCIDR: Forbidden: fromCIDR is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with fromEndpoints"},
		{"toFQDNs", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Egress[0].ToFQDNs = []runtime.RawExtension{{Raw: []byte(`{"matchName":"example.com"}`)}}
		}, "spec.egress[0].toFQDNs: Forbidden: toFQDNs is not supported"},
		{"L7 rules", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].ToPorts[0].Rules = &runtime.RawExtension{Raw: []byte(`{"http":[{"method":"GET"}]}`)}
		}, "spec.ingress[0].toPorts[0].rules: Forbidden: rules (L7) is not supported"},
		{"endPort", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.Ingress[0].ToPorts[0].Ports[0].EndPort = ptr.To[int32](8090)
		}, "spec.ingress[0].toPorts[0].ports[0].endPort: Forbidden: endPort is not supported: list each port of the range"},
		{"ingressDeny", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Spec.IngressDeny = []runtime.RawExtension{{Raw: []byte(`{"fromEntities":["world"]}`)}}
		}, "spec.ingressDeny: Forbidden: ingressDeny is not supported"},
		{"specs", func(p *v1alpha1.MeshNetworkPolicy) {
			p.Specs = []runtime.RawExtension{{Raw: []byte(`{"endpointSelector":{}}`)}}
		}, "specs: Forbidden: specs is not supported: write one MeshNetworkPolicy per rule, each with spec"},
		{"too many rules", func(p *v1alpha1.MeshNetworkPolicy) {
			for range 64 {
				p.Spec.Egress = append(p.Spec.Egress, p.Spec.Egress[0])
			}
		}, "spec.egress: Too many"},
	}
	for i, tc := range invalid {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			p := validPolicy(ns, fmt.Sprintf("bad-%d", i))
			tc.mutate(p)
			_, err := policies.Create(ctx, p, metav1.CreateOptions{})
			if !apierrors.IsInvalid(err) {
				t.Fatalf("create = %v, want Invalid", err)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not say %q", err, tc.message)
			}
		})
	}

	t.Run("status subresource", func(t *testing.T) {
		p, err := policies.Get(ctx, "good", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.ObservedGeneration = p.Generation
		p.Status.Conditions = []metav1.Condition{{
			Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonAccepted,
			Message: "in force", ObservedGeneration: p.Generation, LastTransitionTime: metav1.Now(),
		}}
		p.Spec.Egress = nil // ignored by the status subresource
		got, err := policies.UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("UpdateStatus: %v", err)
		}
		if len(got.Status.Conditions) != 1 || got.Status.ObservedGeneration != 1 {
			t.Errorf("status after UpdateStatus = %+v", got.Status)
		}
		if len(got.Spec.Egress) != 1 || got.Generation != 1 {
			t.Errorf("UpdateStatus changed the spec: egress %v, generation %d", got.Spec.Egress, got.Generation)
		}
		// A spec update bumps the generation and leaves the status alone.
		got.Spec.Ingress[0].ToPorts[0].Ports[0].Port = "8081"
		got.Status = v1alpha1.MeshNetworkPolicyStatus{}
		upd, err := policies.Update(ctx, got, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
		if upd.Generation != 2 || len(upd.Status.Conditions) != 1 {
			t.Errorf("after a spec update: generation %d, status %+v", upd.Generation, upd.Status)
		}
		// A condition without a reason is refused by metav1.Condition's schema.
		upd.Status.Conditions[0].Reason = ""
		if _, err := policies.UpdateStatus(ctx, upd, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
			t.Errorf("UpdateStatus with an empty reason = %v, want Invalid", err)
		}
	})

	t.Run("printer columns", func(t *testing.T) {
		table := getTable(ctx, t, cs, "namespaces/"+ns+"/"+v1alpha1.ResourceMeshNetworkPolicies)
		checkColumns(t, table, map[string]string{"Name": "good", "Accepted": "True"})
	})

	t.Run("MeshAgent status", func(t *testing.T) {
		// MeshAgents are cluster-scoped: name this one after the test's
		// namespace so that runs sharing the control plane do not meet.
		node := "node-" + ns
		agents := cs.MeshAgents()
		a, err := agents.Create(ctx, &v1alpha1.MeshAgent{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create MeshAgent: %v", err)
		}
		t.Cleanup(func() { agents.Delete(context.Background(), node, metav1.DeleteOptions{}) })
		now := metav1.Now()
		a.Status = v1alpha1.MeshAgentStatus{
			NodeName: node, ClusterName: "cluster1", LastHeartbeatTime: &now,
			Clusters: []v1alpha1.MeshAgentCluster{
				{Name: "cluster1", ClusterID: 1, Local: true, Connected: true, Ready: true,
					Nodes: v1alpha1.KindSync{Synced: true, Entries: 3}, Identities: v1alpha1.KindSync{Synced: true, Entries: 40},
					Services: v1alpha1.KindSync{Synced: true}, IPCache: v1alpha1.KindSync{Synced: true, Entries: 90}, LastChangeTime: &now},
				{Name: "cluster2", ClusterID: 2, Connected: false,
					LastError: &v1alpha1.ClusterError{Message: "dial tcp 10.0.0.2:2379: connection refused", Time: now}},
			},
		}
		a.Status.CountClusters()
		got, err := agents.UpdateStatus(ctx, a, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("UpdateStatus: %v", err)
		}
		if got.Status.ClustersReady != 1 || got.Status.ClustersTotal != 2 || got.Status.Clusters[1].LastError == nil {
			t.Errorf("status = %+v", got.Status)
		}
		table := getTable(ctx, t, cs, v1alpha1.ResourceMeshAgents)
		checkColumns(t, table, map[string]string{"Name": node, "Cluster": "cluster1", "Ready": "1", "Clusters": "2"})

		// Duplicate cluster names are refused (list-map keyed by name).
		got.Status.Clusters = append(got.Status.Clusters, got.Status.Clusters[0])
		if _, err := agents.UpdateStatus(ctx, got, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
			t.Errorf("UpdateStatus with a duplicate cluster = %v, want Invalid", err)
		}
	})

	t.Run("informer", func(t *testing.T) {
		inf := NewMeshNetworkPolicyInformer(cs, InformerOptions{Namespace: ns})
		ictx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { inf.RunWithContext(ictx); close(done) }()
		defer func() { stop(); <-done }()
		if !cache.WaitForCacheSync(ictx.Done(), inf.HasSynced) {
			t.Fatal("informer did not sync")
		}
		lister := MeshNetworkPolicyLister(inf)
		if _, err := policies.Create(ctx, validPolicy(ns, "later"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			p, err := lister.Get(ns + "/later")
			return err == nil && p.Spec.EndpointSelector.MatchLabels["app"] == "backend", nil
		})
		if err != nil {
			t.Errorf("informer never showed the new policy: %v", err)
		}
		all, err := lister.List(labels.Everything())
		if err != nil || len(all) != 2 {
			t.Errorf("lister lists %d policies (%v), want 2", len(all), err)
		}
	})
}

// getTable asks the apiserver for the server-side printed table of a
// resource path under isthmus.dev/v1alpha1, as kubectl get does.
func getTable(ctx context.Context, t *testing.T, cs *Clientset, path string) *metav1.Table {
	t.Helper()
	raw, err := cs.RESTClient().Get().AbsPath("/apis/isthmus.dev/v1alpha1/"+path).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
	if err != nil {
		t.Fatalf("get table %s: %v", path, err)
	}
	table := &metav1.Table{}
	if err := json.Unmarshal(raw, table); err != nil {
		t.Fatalf("decode table: %v", err)
	}
	return table
}

// checkColumns checks the table has a row whose named columns print want.
func checkColumns(t *testing.T, table *metav1.Table, want map[string]string) {
	t.Helper()
	idx := map[string]int{}
	for i, c := range table.ColumnDefinitions {
		idx[c.Name] = i
	}
	for name := range want {
		if _, ok := idx[name]; !ok {
			t.Fatalf("table has no column %q (columns %v)", name, table.ColumnDefinitions)
		}
	}
rows:
	for _, r := range table.Rows {
		for name, v := range want {
			if got := fmtCell(r.Cells[idx[name]]); got != v {
				continue rows
			}
		}
		return
	}
	t.Errorf("no row prints %v; rows: %v", want, table.Rows)
}

// fmtCell prints a cell as kubectl would: JSON numbers arrive as float64.
func fmtCell(c any) string { return fmt.Sprint(c) }
