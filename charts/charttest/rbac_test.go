package charttest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	appsv1 "k8s.io/api/apps/v1"

	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// annotationPatch is a merge patch setting one annotation, as
// agent/nodekey sends.
func annotationPatch(key, value string) []byte {
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}})
	return b
}

func labelPatch(key, value string) []byte {
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{key: value}}})
	return b
}

// wantForbidden fails t unless err is a 403 whose message has substr.
func wantForbidden(t *testing.T, what string, err error, substr string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: allowed; want forbidden", what)
	case !apierrors.IsForbidden(err):
		t.Errorf("%s: %v; want forbidden", what, err)
	case !strings.Contains(err.Error(), substr):
		t.Errorf("%s: forbidden, but the message does not say %q: %v", what, substr, err)
	}
}

func wantAllowed(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v; want it allowed", what, err)
	}
}

// TestAgentMayChangeOnlyItsOwnNode: the agent's RBAC allows patching
// nodes; the chart's admission policy narrows it to the WireGuard key
// annotation of the agent's own Node and to its own MeshAgent, from the
// node Kubernetes writes into the pod's service account token.
func TestAgentMayChangeOnlyItsOwnNode(t *testing.T) {
	m := setupMesh(t, meshOptions{})
	m.createNode(t, "charttest-n1", "10.244.1.0/24", "192.0.2.11")
	m.createNode(t, "charttest-n2", "10.244.2.0/24", "192.0.2.12")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	ds := toTyped[appsv1.DaemonSet](t, mustFind(t, m.objs, "DaemonSet", "isthmus-agent"))
	agentPod := m.podFor(t, "isthmus-agent-charttest-n1", ds.Spec.Template, "charttest-n1")
	agent := m.clientFor(t, m.token(t, agentPod))
	nodes := agent.CoreV1().Nodes()
	key := meshconfig.NodeWireGuardPubKeyAnnotation
	patch := func(node string, p []byte) error {
		_, err := nodes.Patch(ctx, node, types.MergePatchType, p, metav1.PatchOptions{FieldManager: "isthmus-agent"})
		return err
	}
	// The policy takes effect once the apiserver has loaded it.
	if err := waitFor(ctx, 100*time.Millisecond, func() (bool, error) {
		err := patch("charttest-n2", annotationPatch(key, "other"))
		return apierrors.IsForbidden(err), nil
	}); err != nil {
		t.Fatal("the agent on charttest-n1 can still annotate charttest-n2: the admission policy does not take effect")
	}
	wantForbidden(t, "annotate another Node", patch("charttest-n2", annotationPatch(key, "other")), "only its own Node and MeshAgent")
	wantAllowed(t, "publish the WireGuard key on its own Node", patch("charttest-n1", annotationPatch(key, "bXkga2V5")))
	wantForbidden(t, "label its own Node", patch("charttest-n1", labelPatch("node-role.kubernetes.io/control-plane", "")), "only the annotation")
	wantForbidden(t, "set another annotation on its own Node", patch("charttest-n1", annotationPatch("example.com/x", "y")), "only the annotation")
	taint, _ := json.Marshal(map[string]any{"spec": map[string]any{"unschedulable": true}})
	wantForbidden(t, "cordon its own Node", patch("charttest-n1", taint), "only the annotation")

	mc, err := meshclient.NewForConfig(m.c.restConfigFor(m.token(t, agentPod)))
	if err != nil {
		t.Fatal(err)
	}
	own, err := mc.MeshAgents().Create(ctx, &v1alpha1.MeshAgent{ObjectMeta: metav1.ObjectMeta{Name: "charttest-n1"}}, metav1.CreateOptions{})
	wantAllowed(t, "create its own MeshAgent", err)
	if err == nil {
		t.Cleanup(func() {
			_ = m.c.dyn.Resource(v1alpha1.SchemeGroupVersion.WithResource("meshagents")).Delete(context.Background(), own.Name, metav1.DeleteOptions{})
		})
		own.Status.NodeName, own.Status.ClusterName = "charttest-n1", testClusterName
		_, err = mc.MeshAgents().UpdateStatus(ctx, own, metav1.UpdateOptions{})
		wantAllowed(t, "write its own MeshAgent's status", err)
	}
	_, err = mc.MeshAgents().Create(ctx, &v1alpha1.MeshAgent{ObjectMeta: metav1.ObjectMeta{Name: "charttest-n2"}}, metav1.CreateOptions{})
	wantForbidden(t, "create another node's MeshAgent", err, "only its own Node and MeshAgent")

	// A token bound to no pod names no node: nothing to match.
	unbound := m.clientFor(t, m.unboundToken(t, "isthmus-agent"))
	_, err = unbound.CoreV1().Nodes().Patch(ctx, "charttest-n1", types.MergePatchType, annotationPatch(key, "x"), metav1.PatchOptions{})
	wantForbidden(t, "annotate a Node with a token naming no node", err, "its token names no node")
}

// TestChartRBACIsLeast: what the components must not do, with the
// credentials the chart gives them.
func TestChartRBACIsLeast(t *testing.T) {
	m := setupMesh(t, meshOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := meshconfig.Namespace
	if _, err := m.c.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.RemoteReadersConfigMap}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ds := toTyped[appsv1.DaemonSet](t, mustFind(t, m.objs, "DaemonSet", "isthmus-agent"))
	dep := toTyped[appsv1.Deployment](t, mustFind(t, m.objs, "Deployment", "isthmus-apiserver"))
	m.createNode(t, "charttest-n1", "10.244.1.0/24", "192.0.2.11")
	agent := m.clientFor(t, m.token(t, m.podFor(t, "isthmus-agent-charttest-n1", ds.Spec.Template, "charttest-n1")))
	api := m.clientFor(t, m.token(t, m.podFor(t, "isthmus-apiserver-test", dep.Spec.Template, "")))

	_, err := agent.CoreV1().Secrets(ns).Get(ctx, meshconfig.ClusterMeshSecret, metav1.GetOptions{})
	wantAllowed(t, "agent reads the clustermesh Secret", err)
	for _, s := range []string{meshconfig.CASecret, meshconfig.LocalCertSecret, meshconfig.AdminCertSecret, meshconfig.ServerCertSecret} {
		_, err := agent.CoreV1().Secrets(ns).Get(ctx, s, metav1.GetOptions{})
		wantForbidden(t, "agent reads Secret "+s, err, "cannot get resource")
		_, err = api.CoreV1().Secrets(ns).Get(ctx, s, metav1.GetOptions{})
		wantForbidden(t, "apiserver reads Secret "+s, err, "cannot get resource")
	}
	_, err = agent.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	wantForbidden(t, "agent lists Secrets", err, "cannot list resource")
	_, err = agent.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	wantForbidden(t, "agent lists Pods", err, "cannot list resource")
	_, err = agent.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
	wantForbidden(t, "agent creates a ConfigMap", err, "cannot create resource")

	_, err = api.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "isthmus-charttest-x"}}, metav1.CreateOptions{})
	wantForbidden(t, "apiserver creates a Namespace", err, "cannot create resource")
	cm, err := api.CoreV1().ConfigMaps(ns).Get(ctx, meshconfig.RemoteReadersConfigMap, metav1.GetOptions{})
	wantAllowed(t, "apiserver reads the remote readers", err)
	if err == nil {
		cm.Data = map[string]string{"mallory": ""}
		_, err = api.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
		wantForbidden(t, "apiserver edits the remote readers (only `isthmus connect` does)", err, "cannot update resource")
	}
	_, err = api.CoreV1().Nodes().Patch(ctx, "charttest-n1", types.MergePatchType, labelPatch("x", "y"), metav1.PatchOptions{})
	wantForbidden(t, "apiserver patches a Node", err, "cannot patch resource")
	dyn, err := dynamic.NewForConfig(m.c.restConfigFor(m.unboundToken(t, "isthmus-apiserver")))
	if err != nil {
		t.Fatal(err)
	}
	_, err = dyn.Resource(v1alpha1.SchemeGroupVersion.WithResource("meshagents")).List(ctx, metav1.ListOptions{})
	wantForbidden(t, "apiserver lists MeshAgents", err, "cannot list resource")
}
