package charttest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

// testClusterName and testClusterID are what `isthmus enable` is run with.
const (
	testClusterName = "charttest"
	testClusterID   = 7
)

// mesh is a cluster prepared as a user would: `isthmus enable`, then the
// chart installed.
type mesh struct {
	c    *cluster
	objs []*unstructured.Unstructured
	// etcdPort is where the apiserver's etcd will listen (the published
	// mesh endpoint, on loopback).
	etcdPort int
	endpoint string
}

// meshOptions shape setupMesh.
type meshOptions struct {
	// values are chart values; the advertised endpoints are set.
	values values
	// extraEndpoints are advertised besides the real one.
	extraEndpoints []string
	// withoutConfigMap deletes isthmus-config after enable, as on a cluster
	// whose certificates cert-manager issued.
	withoutConfigMap bool
}

// setupMesh runs meshops.Enable (what `isthmus enable` runs) and installs
// every object the chart renders with opts.values, all removed when t
// ends.
func setupMesh(t *testing.T, opts meshOptions) *mesh {
	t.Helper()
	c := newCluster(t)
	c.cleanMeshNamespace(t)
	m := &mesh{c: c, etcdPort: freePort(t)}
	m.endpoint = fmt.Sprintf("https://127.0.0.1:%d", m.etcdPort)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	mc, err := meshops.NewCluster("testenv", c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := meshops.Enable(ctx, mc, meshops.EnableOptions{ClusterName: testClusterName, ClusterID: testClusterID, MeshEndpoints: []string{m.endpoint}}); err != nil {
		t.Fatalf("isthmus enable: %v", err)
	}
	if opts.withoutConfigMap {
		if err := c.Client.CoreV1().ConfigMaps(meshconfig.Namespace).Delete(ctx, meshconfig.ConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	v := values{}
	for k, val := range opts.values {
		v[k] = val
	}
	api, _ := v["apiserver"].(map[string]any)
	if api == nil {
		api = map[string]any{}
	}
	api["advertiseEndpoints"] = append([]string{m.endpoint}, opts.extraEndpoints...)
	v["apiserver"] = api
	m.objs = render(t, v)
	c.install(t, m.objs)
	return m
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// createNode registers a Node, as a kubelet would, and removes it when t
// ends.
func (m *mesh) createNode(t *testing.T, name, podCIDR, ip string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes := m.c.Client.CoreV1().Nodes()
	n, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = nodes.Delete(ctx, name, metav1.DeleteOptions{})
	})
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if _, err := nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// podFor creates a pod of the rendered template (bound to node when not
// empty), as the Deployment or DaemonSet controller would: the apiserver
// admits it (priority class, service account, privileged host mounts),
// and its service account token is bound to it.
func (m *mesh) podFor(t *testing.T, name string, tmpl corev1.PodTemplateSpec, node string) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: meshconfig.Namespace, Labels: tmpl.Labels}, Spec: *tmpl.Spec.DeepCopy()}
	pod.Spec.NodeName = node
	pod, err := m.c.Client.CoreV1().Pods(meshconfig.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create a pod of the rendered template: %v", err)
	}
	return pod
}

// token returns a token of the pod's service account bound to the pod, as
// the kubelet requests for its projected volume; Kubernetes puts the
// pod's node into it.
func (m *mesh) token(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := m.c.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptrTo[int64](3600),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// unboundToken is a token of the service account bound to no pod, so
// naming no node.
func (m *mesh) unboundToken(t *testing.T, serviceAccount string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := m.c.Client.CoreV1().ServiceAccounts(meshconfig.Namespace).CreateToken(ctx, serviceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptrTo[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func ptrTo[T any](v T) *T { return &v }

// clientFor is a clientset authenticating with token.
func (m *mesh) clientFor(t *testing.T, token string) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(m.c.restConfigFor(token))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// kubeconfig writes a kubeconfig authenticating with token: what the
// in-cluster config is in a pod.
func (m *mesh) kubeconfig(t *testing.T, token string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: m.c.Config.Host, CertificateAuthorityData: m.c.ControlPlane.CACertPEM()}
	cfg.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "sa"}
	cfg.CurrentContext = "c"
	// Readable by the container's user, which may not be the test's.
	dir, err := os.MkdirTemp("", "isthmus-charttest-kubeconfig-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// podEnvFor is how the pod sees the world.
func (m *mesh) podEnvFor(t *testing.T, pod *corev1.Pod, hostPaths map[string]string) *podEnv {
	p := newPodEnv(t, m.c.Client, meshconfig.Namespace)
	p.fields = map[string]string{"spec.nodeName": pod.Spec.NodeName, "metadata.name": pod.Name, "metadata.namespace": pod.Namespace}
	if hostPaths != nil {
		p.hostPaths = hostPaths
	}
	p.commands = images(t)
	return p
}

// runAPIServer runs the rendered mesh apiserver with its service account's
// credentials, on loopback, and waits until /readyz answers 200.
func (m *mesh) runAPIServer(t *testing.T) *process {
	t.Helper()
	dep := toTyped[appsv1.Deployment](t, mustFind(t, m.objs, "Deployment", "isthmus-apiserver"))
	pod := m.podFor(t, "isthmus-apiserver-test", dep.Spec.Template, "")
	// The rendered spec, not the admitted pod's: admission adds the service
	// account token volume, whose fixed path the binaries read only in a
	// pod; here they get the same token in a kubeconfig.
	lc := m.podEnvFor(t, pod, nil).prepare(t, dep.Spec.Template.Spec, "isthmus-apiserver")
	health := freePort(t)
	p := lc.start(t,
		"--kubeconfig="+m.kubeconfig(t, m.token(t, pod)),
		fmt.Sprintf("--listen-address=127.0.0.1:%d", m.etcdPort),
		fmt.Sprintf("--health-address=127.0.0.1:%d", health))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := p.waitUntil(ctx, "/readyz answers 200", httpOK(fmt.Sprintf("http://127.0.0.1:%d/readyz", health))); err != nil {
		t.Fatal(err)
	}
	if dir, ok := lc.localPath("/var/lib/isthmus/etcd"); !ok || isEmptyDir(dir) {
		t.Errorf("the embedded etcd wrote nothing to its volume (%s): --data-dir is not on it", dir)
	}
	return p
}

func isEmptyDir(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err != nil || len(entries) == 0
}

func httpOK(url string) func() (bool, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	return func() (bool, error) {
		resp, err := client.Get(url)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("%s: %s", url, resp.Status)
		}
		return true, nil
	}
}

// noForbidden fails t when the process logged a request Kubernetes
// refused: the RBAC the chart grants lacks something the binary does.
func noForbidden(t *testing.T, p *process) {
	t.Helper()
	var bad []string
	for _, line := range strings.Split(p.log(), "\n") {
		if strings.Contains(strings.ToLower(line), "forbidden") {
			bad = append(bad, line)
		}
	}
	if len(bad) > 0 {
		t.Errorf("%s was refused by the kube-apiserver (the chart's RBAC lacks a grant):\n%s", p.name, strings.Join(bad, "\n"))
	}
}

// badlyAnnotatedService creates a global Service with an affinity no one
// knows, which the apiserver and the agent report as Events.
func (m *mesh) badlyAnnotatedService(t *testing.T) *corev1.Service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: m.c.Namespace, Annotations: map[string]string{
			meshconfig.ServiceGlobalAnnotation: "true", meshconfig.ServiceAffinityAnnotation: "sideways",
		}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}, Selector: map[string]string{"app": "echo"}},
	}
	svc, err := m.c.Client.CoreV1().Services(m.c.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// waitEvent waits for an Event about obj from component (core/v1 source or
// events.k8s.io reporting controller).
func (m *mesh) waitEvent(t *testing.T, p *process, obj metav1.Object, component string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := p.waitUntil(ctx, "an Event from "+component+" about "+obj.GetName(), func() (bool, error) {
		evs, err := m.c.Client.EventsV1().Events(obj.GetNamespace()).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if e.Regarding.UID == obj.GetUID() && (e.ReportingController == component || e.DeprecatedSource.Component == component) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Error(err)
	}
}

// TestAPIServerRunsWithChartRBAC runs the real isthmus-apiserver from the
// rendered Deployment (mounts, environment, arguments) with the chart's
// service account and RBAC: it exports, becomes ready, publishes its
// endpoints, follows the remote readers ConfigMap and records Events,
// and is refused nothing.
func TestAPIServerRunsWithChartRBAC(t *testing.T) {
	m := setupMesh(t, meshOptions{extraEndpoints: []string{"https://198.51.100.1:2379"}})
	m.createNode(t, "charttest-n1", "10.244.1.0/24", "192.0.2.11")
	p := m.runAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cms := m.c.Client.CoreV1().ConfigMaps(meshconfig.Namespace)

	// It publishes the advertised endpoints (update isthmus-config).
	want := m.endpoint + ",https://198.51.100.1:2379"
	if err := p.waitUntil(ctx, "isthmus-config lists the advertised endpoints", func() (bool, error) {
		cm, err := cms.Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
		return err == nil && cm.Data[meshconfig.KeyMeshEndpoints] == want, err
	}); err != nil {
		t.Error(err)
	}
	// It follows the remote readers (get, list, watch by name).
	if _, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.RemoteReadersConfigMap}, Data: map[string]string{"west": ""}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := p.waitUntil(ctx, "the etcd user of remote reader west", func() (bool, error) {
		for _, line := range strings.Split(p.log(), "\n") {
			if strings.Contains(line, "remote etcd users updated") && strings.Contains(line, "west") {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Error(err)
	}
	// It records Events (create).
	m.waitEvent(t, p, m.badlyAnnotatedService(t), "isthmus-apiserver")
	noForbidden(t, p)
}

// TestAPIServerStartsWithoutIsthmusConfig: with the cluster's identity in
// the values (as with cert-manager, before `isthmus enable`), the
// apiserver creates isthmus-config itself, within the chart's RBAC.
func TestAPIServerStartsWithoutIsthmusConfig(t *testing.T) {
	m := setupMesh(t, meshOptions{
		withoutConfigMap: true,
		values:           values{"cluster": map[string]any{"name": testClusterName, "id": testClusterID}},
	})
	p := m.runAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cm, err := m.c.Client.CoreV1().ConfigMaps(meshconfig.Namespace).Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the apiserver did not create isthmus-config: %v", err)
	}
	if cm.Data[meshconfig.KeyClusterName] != testClusterName || cm.Data[meshconfig.KeyMeshEndpoints] != m.endpoint {
		t.Errorf("isthmus-config %v", cm.Data)
	}
	noForbidden(t, p)
}
