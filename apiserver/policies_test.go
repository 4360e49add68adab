package apiserver_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

// TestPolicyStatus checks that the running mesh apiserver writes the
// Accepted condition of the cluster's MeshNetworkPolicies: the
// policystatus tests cover the writer itself, this its wiring.
func TestPolicyStatus(t *testing.T) {
	k := kube.Kube(t)
	ctx := ctxT(t)
	t.Cleanup(func() { deleteMeshConfigMap(t, k.Client) })
	if err := client.InstallCRDs(ctx, k.Config); err != nil {
		t.Fatal(err)
	}
	cs, err := client.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	policies := cs.MeshNetworkPolicies(k.Namespace)
	bad := &v1alpha1.MeshNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: "bad-port"},
		Spec: v1alpha1.MeshNetworkPolicySpec{
			Ingress: []v1alpha1.IngressRule{{FromEndpoints: []metav1.LabelSelector{{
				MatchLabels: map[string]string{"app": "front end"}, // a space: no label value
			}}}},
		},
	}
	if _, err := policies.Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m := newMeshServer(t, k.Config, serverOptions{})
	m.start()
	eventually(t, time.Minute, "the Accepted condition of bad-port", func() error {
		p, err := policies.Get(ctx, "bad-port", metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
		switch {
		case c == nil:
			return errors.New("no condition")
		case c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, `spec.ingress[0].fromEndpoints[0].matchLabels[app]: Invalid value: "front end"`):
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
}
