package testenv_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/kubebin"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestServiceClusterIP: the default service range admits the ClusterIPs
// the mesh's tests use.
func TestServiceClusterIP(t *testing.T) {
	k := apiOnly.Kube(t)
	t.Logf("control plane startup: %s", apiOnly.StartupTime())
	ctx := testContext(t)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: k.Namespace},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.50.104",
			Ports:     []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := k.Client.CoreV1().Services(k.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}
	got, err := k.Client.CoreV1().Services(k.Namespace).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get service: %v", err)
	}
	if got.Spec.ClusterIP != "10.96.50.104" || len(got.Spec.ClusterIPs) != 1 || got.Spec.ClusterIPs[0] != "10.96.50.104" {
		t.Errorf("service ClusterIP = %q (%v), want 10.96.50.104", got.Spec.ClusterIP, got.Spec.ClusterIPs)
	}

	// Outside the range is refused: the range is really 10.96.0.0/16.
	svc.Name, svc.Spec.ClusterIP = "outside", "10.97.0.10"
	if _, err := k.Client.CoreV1().Services(k.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err == nil {
		t.Errorf("service with ClusterIP 10.97.0.10, outside 10.96.0.0/16, was accepted")
	}
}

// TestKubeconfigAndVersion: the per-test kubeconfig works on its own and
// defaults to the test's namespace, and the apiserver is the pinned
// release.
func TestKubeconfigAndVersion(t *testing.T) {
	k := apiOnly.Kube(t)
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: k.Kubeconfig}, &clientcmd.ConfigOverrides{})
	ns, _, err := loader.Namespace()
	if err != nil || ns != k.Namespace {
		t.Errorf("kubeconfig namespace = %q, %v; want %q", ns, err, k.Namespace)
	}
	cfg, err := loader.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := client.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version through the kubeconfig: %v", err)
	}
	if v.GitVersion != kubebin.KubernetesVersion {
		t.Errorf("apiserver version %s, want %s", v.GitVersion, kubebin.KubernetesVersion)
	}
	// Pods can be created without the controller manager: Kube made the
	// default ServiceAccount.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: k.Namespace},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "echo"}}},
	}
	if _, err := k.Client.CoreV1().Pods(k.Namespace).Create(testContext(t), pod, metav1.CreateOptions{}); err != nil {
		t.Errorf("create pod: %v", err)
	}
}

// TestNamespacesAreFresh: each test gets its own namespace.
func TestNamespacesAreFresh(t *testing.T) {
	apiOnly.Kube(t) // skips under -short
	var seen []string
	for i := range 2 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			k := apiOnly.Kube(t)
			seen = append(seen, k.Namespace)
		})
	}
	if len(seen) != 2 || seen[0] == seen[1] || !strings.HasPrefix(seen[0], "testnamespacesarefresh-0-") {
		t.Errorf("namespaces %v, want two distinct", seen)
	}
}

// TestDeploymentScheduledAndEndpoints runs the real controllers: the
// Deployment controller makes a ReplicaSet, the ReplicaSet controller
// pods, the scheduler binds them to the only Node that fits, and once the
// pods are Running and Ready (set here, as there is no kubelet) the
// EndpointSlice controller lists them behind the Service.
func TestDeploymentScheduledAndEndpoints(t *testing.T) {
	k := withControllers.Kube(t)
	t.Logf("control plane startup with controllers: %s", withControllers.StartupTime())
	ctx := testContext(t)
	nodeName := "node-" + strings.ToLower(k.Namespace[len(k.Namespace)-6:])
	createReadyNode(ctx, t, k, nodeName)

	labels := map[string]string{"app": "echo"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: k.Namespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](3),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					// Only this test's node: other tests may add nodes.
					NodeSelector: map[string]string{"kubernetes.io/hostname": nodeName},
					Containers: []corev1.Container{{
						Name: "echo", Image: "echo",
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
					}},
				},
			},
		},
	}
	if _, err := k.Client.AppsV1().Deployments(k.Namespace).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: k.Namespace},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	if _, err := k.Client.CoreV1().Services(k.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}

	var pods []corev1.Pod
	poll(ctx, t, "3 pods of the Deployment's ReplicaSet bound to "+nodeName, func() (bool, error) {
		rss, err := k.Client.AppsV1().ReplicaSets(k.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil || len(rss.Items) != 1 || !ownedBy(rss.Items[0].OwnerReferences, "Deployment", "echo") {
			return false, err
		}
		list, err := k.Client.CoreV1().Pods(k.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		pods = list.Items
		bound := 0
		for _, p := range pods {
			if ownedBy(p.OwnerReferences, "ReplicaSet", rss.Items[0].Name) && p.Spec.NodeName == nodeName {
				bound++
			}
		}
		return len(pods) == 3 && bound == 3, nil
	})

	want := map[string]bool{}
	for i, p := range pods {
		ip := fmt.Sprintf("10.244.7.%d", 10+i)
		want[ip] = true
		p.Status.Phase = corev1.PodRunning
		p.Status.HostIP = "192.0.2.10"
		p.Status.HostIPs = []corev1.HostIP{{IP: "192.0.2.10"}}
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		now := metav1.Now()
		p.Status.StartTime = &now
		p.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		}
		if _, err := k.Client.CoreV1().Pods(k.Namespace).UpdateStatus(ctx, &p, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("mark pod %s running: %v", p.Name, err)
		}
	}

	poll(ctx, t, "the EndpointSlice controller to list the 3 ready pods", func() (bool, error) {
		slices, err := k.Client.DiscoveryV1().EndpointSlices(k.Namespace).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=echo",
		})
		if err != nil {
			return false, err
		}
		got := map[string]bool{}
		for _, s := range slices.Items {
			if s.Labels[discoveryv1.LabelManagedBy] != "endpointslice-controller.k8s.io" {
				continue
			}
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready && ep.NodeName != nil && *ep.NodeName == nodeName {
					for _, a := range ep.Addresses {
						got[a] = true
					}
				}
			}
		}
		return len(got) == len(want) && func() bool {
			for ip := range want {
				if !got[ip] {
					return false
				}
			}
			return true
		}(), nil
	})
}

func createReadyNode(ctx context.Context, t *testing.T, k *testenv.Kube, name string) {
	t.Helper()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("4"),
		corev1.ResourceMemory: resource.MustParse("8Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
	}
	created, err := k.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := k.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete node %s: %v", name, err)
		}
	})
	now := metav1.Now()
	created.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       corev1.NodeRunning,
		Addresses:   []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.10"}},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
	}
	if _, err := k.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("mark node ready: %v", err)
	}
}

func ownedBy(refs []metav1.OwnerReference, kind, name string) bool {
	for _, r := range refs {
		if r.Kind == kind && r.Name == name && r.Controller != nil && *r.Controller {
			return true
		}
	}
	return false
}

// poll waits for cond, failing t with what it waited for on timeout.
func poll(ctx context.Context, t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	var lastErr error
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
		ok, err := cond()
		if err != nil {
			lastErr = err
		}
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last error: %v)", what, err, lastErr)
	}
}
