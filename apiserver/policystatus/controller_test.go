package policystatus_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/apiserver/policystatus"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) { testenv.Main(m, kube) }

const waitTimeout = 30 * time.Second

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func policy(ns, name string, peerOperator metav1.LabelSelectorOperator) *v1alpha1.MeshNetworkPolicy {
	return &v1alpha1.MeshNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
			Ingress: []v1alpha1.IngressRule{{
				FromEndpoints: []metav1.LabelSelector{{MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: "io.cilium.k8s.policy.cluster", Operator: peerOperator, Values: []string{"c2"},
				}}}},
			}},
		},
	}
}

// counter returns the sum of a counter family's series.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TestController runs the status writer against a real kube-apiserver: a
// policy the CRD admits but validation refuses (a bad peer operator) gets
// Accepted=False naming the field, and a Warning Event; fixing it gets
// Accepted=True for the new generation; changes that do not touch the spec
// cause no write, so the writer's own writes do not loop; a status someone
// else overwrote is put right.
func TestController(t *testing.T) {
	k := kube.Kube(t) // skips under -short
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := client.InstallCRDs(ctx, k.Config); err != nil {
		t.Fatal(err)
	}
	cs, err := client.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	policies := cs.MeshNetworkPolicies(k.Namespace)
	// One policy exists before the writer starts.
	if _, err := policies.Create(ctx, policy(k.Namespace, "early", metav1.LabelSelectorOpIn), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: k.Client.CoreV1().Events("")})
	reg := prometheus.NewRegistry()
	c, err := policystatus.New(testLogger(), policystatus.Config{
		Client: cs, Namespace: k.Namespace, Registry: reg,
		Recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "isthmus-apiserver"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(rctx); close(done) }()
	defer func() { stop(); <-done }()

	waitCondition := func(name string, generation int64) (metav1.Condition, *v1alpha1.MeshNetworkPolicy) {
		t.Helper()
		var cond metav1.Condition
		var p *v1alpha1.MeshNetworkPolicy
		err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, waitTimeout, true, func(ctx context.Context) (bool, error) {
			var err error
			if p, err = policies.Get(ctx, name, metav1.GetOptions{}); err != nil {
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
			t.Fatalf("no Accepted condition for generation %d of %s: %v (status %+v)", generation, name, err, p.Status)
		}
		return cond, p
	}

	t.Run("a policy that existed before the writer started", func(t *testing.T) {
		if cond, _ := waitCondition("early", 1); cond.Status != metav1.ConditionTrue || cond.Reason != v1alpha1.ReasonAccepted {
			t.Errorf("condition %+v", cond)
		}
	})

	t.Run("invalid policy: condition and Event", func(t *testing.T) {
		if _, err := policies.Create(ctx, policy(k.Namespace, "bad", "Equals"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		cond, _ := waitCondition("bad", 1)
		want := `spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: Unsupported value: "Equals"`
		if cond.Status != metav1.ConditionFalse || cond.Reason != v1alpha1.ReasonInvalid || !strings.Contains(cond.Message, want) || !strings.Contains(cond.Message, "allows nothing") {
			t.Errorf("condition %+v, want Invalid naming %s", cond, want)
		}
		var events []corev1.Event
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, waitTimeout, true, func(ctx context.Context) (bool, error) {
			list, err := k.Client.CoreV1().Events(k.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=bad"})
			if err != nil {
				return false, nil
			}
			events = list.Items
			return len(events) > 0, nil
		})
		if err != nil {
			t.Fatalf("no Event on the invalid policy: %v", err)
		}
		e := events[0]
		if e.Type != corev1.EventTypeWarning || e.Reason != policystatus.ReasonInvalid || e.InvolvedObject.Kind != v1alpha1.KindMeshNetworkPolicy ||
			e.InvolvedObject.APIVersion != v1alpha1.SchemeGroupVersion.String() || !strings.Contains(e.Message, want) || !strings.Contains(e.Message, "Generation 1") {
			t.Errorf("Event %s %s on %+v: %q", e.Type, e.Reason, e.InvolvedObject, e.Message)
		}
	})

	t.Run("fixing it brings it into force", func(t *testing.T) {
		p, err := policies.Get(ctx, "bad", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Spec.Ingress[0].FromEndpoints[0].MatchExpressions[0].Operator = metav1.LabelSelectorOpIn
		if _, err := policies.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if cond, _ := waitCondition("bad", 2); cond.Status != metav1.ConditionTrue {
			t.Errorf("condition after the fix %+v", cond)
		}
	})

	t.Run("changes outside the spec cause no write", func(t *testing.T) {
		_, p := waitCondition("bad", 2)
		writes := counter(t, reg, "isthmus_apiserver_policy_status_writes_total")
		checks := counter(t, reg, "isthmus_apiserver_policy_status_checks_total")
		p.Labels = map[string]string{"touched": "yes"}
		updated, err := policies.Update(ctx, p, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, waitTimeout, true, func(context.Context) (bool, error) {
			return counter(t, reg, "isthmus_apiserver_policy_status_checks_total") > checks, nil
		})
		if err != nil {
			t.Fatal("the label change was never checked")
		}
		if w := counter(t, reg, "isthmus_apiserver_policy_status_writes_total"); w != writes {
			t.Errorf("status writes went from %v to %v on a label change", writes, w)
		}
		if cur, _ := policies.Get(ctx, "bad", metav1.GetOptions{}); cur.ResourceVersion != updated.ResourceVersion {
			t.Errorf("resource version moved from %s to %s without a spec change", updated.ResourceVersion, cur.ResourceVersion)
		}
	})

	t.Run("a status someone else overwrote is put right", func(t *testing.T) {
		_, p := waitCondition("bad", 2)
		meta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{
			Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonInvalid,
			Message: "an agent thinks so", ObservedGeneration: 2,
		})
		if _, err := policies.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, waitTimeout, true, func(ctx context.Context) (bool, error) {
			cur, err := policies.Get(ctx, "bad", metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			c := meta.FindStatusCondition(cur.Status.Conditions, v1alpha1.ConditionAccepted)
			return c != nil && c.Status == metav1.ConditionTrue, nil
		})
		if err != nil {
			t.Fatal("the overwritten status was not put right")
		}
	})

	t.Run("metrics count the policies", func(t *testing.T) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() == "isthmus_apiserver_policies" {
				for _, m := range mf.GetMetric() {
					got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
		if got["accepted"] != 2 || got["invalid"] != 0 {
			t.Errorf("isthmus_apiserver_policies = %v, want 2 accepted", got)
		}
	})
}
