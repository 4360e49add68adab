package policy_test

import (
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent/policy"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// How an agent drives the compiler: identities from every cluster's
// export, the local cluster's policies from an informer, the node's own
// identities from its pods, and a reconcile loop that applies the changes
// (here printed instead of written to *maps.Policy and *maps.Enforcement).
func Example() {
	c, err := policy.New(policy.Config{Cluster: "cluster1", NodeScoped: true})
	if err != nil {
		panic(err)
	}
	backend := protocol.ComposeIdentity(1, 300, protocol.MaxConnectedClusters255)
	frontend := protocol.ComposeIdentity(2, 400, protocol.MaxConnectedClusters255)
	c.UpsertIdentity(backend, protocol.PodSecurityLabels("cluster1", "shop", "backend", map[string]string{"app": "backend"}, nil))
	c.UpsertIdentity(frontend, protocol.PodSecurityLabels("cluster2", "shop", "frontend", map[string]string{"app": "frontend"}, nil))
	c.SetNodeIdentity(backend, true) // a backend pod runs on this node

	p := &v1alpha1.MeshNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "backend", Generation: 1},
		Spec: v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
			Ingress: []v1alpha1.IngressRule{{
				FromEndpoints: []metav1.LabelSelector{{MatchLabels: map[string]string{
					"app": "frontend", protocol.LabelPolicyCluster: "cluster2",
				}}},
				ToPorts: []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{{Port: "8080", Protocol: v1alpha1.ProtocolTCP}}}},
			}},
		},
	}
	err = c.UpsertPolicy(p)
	policy.SetAccepted(p, err) // then write p.Status with UpdateStatus
	fmt.Println("accepted:", p.Status.Conditions[0].Status)

	ch := c.TakeChanges() // then ch.Apply(m.Policy, m.Enforcement) and bump the policy revision
	keys := make([]maps.PolicyEntryKey, 0, len(ch.Upserts))
	for k := range ch.Upserts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b maps.PolicyEntryKey) int { return int(a.RemoteIdentity) - int(b.RemoteIdentity) })
	for _, k := range keys {
		ref, _ := c.PolicyForRule(ch.Upserts[k].RuleID)
		fmt.Printf("allow %s %d <- %d on %d/%s (%s)\n", k.Direction, k.LocalIdentity, k.RemoteIdentity, k.Port, k.Protocol, ref)
	}
	fmt.Printf("enforce %d: %+v\n", backend, ch.Enforcement[backend])
	// Output:
	// accepted: True
	// allow ingress 65836 <- 131472 on 8080/TCP (shop/backend)
	// enforce 65836: {Ingress:true Egress:false}
}
