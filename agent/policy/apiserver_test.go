package policy

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
)

// TestPoliciesFromAPIServer runs MeshNetworkPolicies from a real
// kube-apiserver through an informer into the compiler and writes their
// Accepted condition back, as the agent will: a policy whose peer selector
// the CRD admits but the compiler refuses gets Accepted=False and fails
// closed; fixing it brings it into force; deleting it restores default
// behaviour.
func TestPoliciesFromAPIServer(t *testing.T) {
	k := kube.Kube(t) // skips under -short
	ns := k.Namespace
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := client.InstallCRDs(ctx, k.Config); err != nil {
		t.Fatal(err)
	}
	cs, err := client.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}

	// Identities of the test's namespace in the local cluster c1 and in c2.
	m := newMesh()
	be := m.add(t, "c1", ns, "backend")
	fe := m.add(t, "c2", ns, "frontend")
	c := newCompiler(t, Config{})
	m.feed(c)

	// The agent's loop, in small: compile each policy event, write the
	// condition when it changed.
	inf := client.NewMeshNetworkPolicyInformer(cs, client.InformerOptions{Namespace: ns})
	policies := cs.MeshNetworkPolicies(ns)
	writeStatus := func(p *v1alpha1.MeshNetworkPolicy, err error) {
		p = p.DeepCopy()
		if !SetAccepted(p, err) {
			return
		}
		if _, err := policies.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			// A conflict means a newer version is on its way to the
			// informer; it will be compiled and written then.
			t.Logf("update status of %s: %v", p.Name, err)
		}
	}
	_, err = inf.AddTypedEventHandler(cache.TypedResourceEventHandlerFuncs[*v1alpha1.MeshNetworkPolicy]{
		AddFunc:    func(p *v1alpha1.MeshNetworkPolicy) { writeStatus(p, c.UpsertPolicy(p)) },
		UpdateFunc: func(_, p *v1alpha1.MeshNetworkPolicy) { writeStatus(p, c.UpsertPolicy(p)) },
		// The key is all a deletion is sure to carry.
		DeleteFunc: func(d cache.DeletedObject[*v1alpha1.MeshNetworkPolicy]) {
			n := d.GetObjectName()
			c.DeletePolicy(n.Namespace, n.Name)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ictx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { inf.RunWithContext(ictx); close(done) }()
	defer func() { stop(); <-done }()
	if !cache.WaitForCacheSync(ictx.Done(), inf.HasSynced) {
		t.Fatal("informer did not sync")
	}

	// A bad operator in a peer selector is admitted (peer selectors are
	// not checked by CEL) ...
	bad := mnp(ns, "backend", v1alpha1.MeshNetworkPolicySpec{
		EndpointSelector: sel("app", "backend"),
		Ingress: []v1alpha1.IngressRule{ingressFrom(peers(
			withExpr(sel("app", "frontend"), labelCluster, "Equals", "c2"),
		), ports("8080/TCP"))},
	})
	if _, err := policies.Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create: %v", err)
	}
	// ... and reported Invalid, naming the field.
	cond := waitCondition(ctx, t, policies, "backend", 1)
	if cond.Status != metav1.ConditionFalse || cond.Reason != v1alpha1.ReasonInvalid ||
		!strings.Contains(cond.Message, `spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: Unsupported value: "Equals"`) {
		t.Errorf("condition = %+v", cond)
	}
	// Meanwhile it fails closed: backend in default deny, nothing allowed.
	entries, enf := c.Snapshot()
	if len(entries) != 0 || enf[be.id] != (maps.Enforced{Ingress: true}) {
		t.Errorf("invalid policy: %d entries, enforcement %v", len(entries), enf)
	}

	// Fixing it brings it into force.
	cur, err := policies.Get(ctx, "backend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Ingress[0].FromEndpoints[0].MatchExpressions[0].Operator = metav1.LabelSelectorOpIn
	if _, err := policies.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update: %v", err)
	}
	cond = waitCondition(ctx, t, policies, "backend", 2)
	if cond.Status != metav1.ConditionTrue || cond.Reason != v1alpha1.ReasonAccepted {
		t.Errorf("condition after the fix = %+v", cond)
	}
	want := key(maps.Ingress, be.id, fe.id, 8080, maps.ProtoTCP)
	if entries, _ := c.Snapshot(); len(entries) != 1 || entries[want].Verdict != maps.Allow {
		t.Errorf("entries after the fix = %v, want %s", entries, m.describe(want))
	}

	// Deleting it restores default behaviour.
	if err := policies.Delete(ctx, "backend", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return c.Stats().Policies == 0, nil
	})
	if err != nil {
		t.Fatalf("the compiler never saw the delete: %v", err)
	}
	if entries, enf := c.Snapshot(); len(entries) != 0 || len(enf) != 0 {
		t.Errorf("after delete: %d entries, enforcement %v", len(entries), enf)
	}
}

// waitCondition waits until the policy's Accepted condition describes
// generation, and returns it.
func waitCondition(ctx context.Context, t *testing.T, policies client.MeshNetworkPolicyInterface, name string, generation int64) metav1.Condition {
	t.Helper()
	var cond metav1.Condition
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := policies.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
		if c == nil || c.ObservedGeneration != generation || p.Status.ObservedGeneration != generation {
			return false, nil
		}
		cond = *c
		return true, nil
	})
	if err != nil {
		t.Fatalf("no Accepted condition for generation %d of %s: %v", generation, name, err)
	}
	return cond
}
