package cli

import (
	"context"
	"encoding/json"
	"maps"
	"net"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
	"github.com/isthmus-mesh/isthmus/internal/meshops/meshopstest"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

// Two clusters' control planes; the CLI reaches them through one
// kubeconfig with contexts ctx-a and ctx-b.
var (
	kubeA = testenv.New(testenv.Options{})
	kubeB = testenv.New(testenv.Options{})
)

func TestMain(m *testing.M) { testenv.Main(m, kubeA, kubeB) }

type cliClusters struct {
	kubeconfig       string
	a, b             kubernetes.Interface
	aConfig, bConfig *rest.Config
}

// cliSetup returns a kubeconfig with contexts ctx-a and ctx-b (and
// ctx-a-again, the same cluster as ctx-a), with empty mesh namespaces and
// a Node each with pod CIDRs 10.1.0.0/24 and 10.2.0.0/24.
func cliSetup(t *testing.T) cliClusters {
	t.Helper()
	ka, kb := kubeA.Kube(t), kubeB.Kube(t)
	merged := clientcmdapi.NewConfig()
	for name, k := range map[string]*testenv.Kube{"ctx-a": ka, "ctx-b": kb, "ctx-a-again": ka} {
		one := k.ControlPlane.Kubeconfig(name)
		maps.Copy(merged.Clusters, one.Clusters)
		maps.Copy(merged.AuthInfos, one.AuthInfos)
		maps.Copy(merged.Contexts, one.Contexts)
	}
	merged.CurrentContext = "ctx-a"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*merged, path); err != nil {
		t.Fatal(err)
	}
	for client, cidr := range map[kubernetes.Interface]string{ka.Client: "10.1.0.0/24", kb.Client: "10.2.0.0/24"} {
		resetMesh(t, client)
		t.Cleanup(func() { resetMesh(t, client) })
		addNode(t, client, "node-"+strings.NewReplacer(".", "-", "/", "-").Replace(cidr), cidr)
	}
	return cliClusters{kubeconfig: path, a: ka.Client, b: kb.Client, aConfig: ka.Config, bConfig: kb.Config}
}

func resetMesh(t *testing.T, client kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	if err := client.CoreV1().Secrets(meshconfig.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().ConfigMaps(meshconfig.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
}

func addNode(t *testing.T, client kubernetes.Interface, name, cidr string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
	if _, err := client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// silentListener accepts connections and never answers, like a firewall
// that drops packets; it returns its address.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	return l.Addr().String()
}

// putAgent writes the MeshAgent of st.NodeName, as the node's agent does;
// t's cleanup deletes it.
func putAgent(t *testing.T, cfg *rest.Config, st v1alpha1.MeshAgentStatus) {
	t.Helper()
	mc, err := meshclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, err := mc.MeshAgents().Create(ctx, &v1alpha1.MeshAgent{ObjectMeta: metav1.ObjectMeta{Name: st.NodeName}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mc.MeshAgents().Delete(context.Background(), st.NodeName, metav1.DeleteOptions{}) })
	st.CountClusters()
	a.Status = st
	if _, err := mc.MeshAgents().UpdateStatus(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// versions returns the resourceVersion of every object in the mesh
// namespace.
func versions(t *testing.T, client kubernetes.Interface) map[string]string {
	t.Helper()
	out := map[string]string{}
	secrets, err := client.CoreV1().Secrets(meshconfig.Namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		out["Secret/"+s.Name] = s.ResourceVersion
	}
	cms, err := client.CoreV1().ConfigMaps(meshconfig.Namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cms.Items {
		out["ConfigMap/"+c.Name] = c.ResourceVersion
	}
	return out
}

// mustRun runs the CLI and fails t unless it exits 0.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, stdout, stderr := runCLI(t, args...)
	if code != 0 {
		t.Fatalf("isthmus %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

func TestCLIEnableConnectStatusDisconnect(t *testing.T) {
	cl := cliSetup(t)
	kc := "--kubeconfig=" + cl.kubeconfig
	out := mustRun(t, "enable", kc, "--context", "ctx-a", "--cluster-name", "a", "--cluster-id", "1")
	if !strings.Contains(out, `Enabled cluster "a" (ID 1, max-connected-clusters 255) in context "ctx-a"`) || !strings.Contains(out, "create Secret isthmus-system/isthmus-ca (new mesh CA)") {
		t.Errorf("enable output:\n%s", out)
	}
	mustRun(t, "enable", kc, "--context", "ctx-b", "--cluster-name", "b", "--cluster-id", "2")
	if out := mustRun(t, "enable", kc, "--context", "ctx-b", "--cluster-name", "b", "--cluster-id", "2"); !strings.Contains(out, "is already enabled; nothing changed") {
		t.Errorf("second enable:\n%s", out)
	}
	// The real mesh apiservers, started with what enable wrote; they
	// publish their endpoints and create the users connect grants.
	meshopstest.StartAPIServers(t, meshopstest.APIServerOptions{}, cl.aConfig, cl.bConfig)

	code, stdout, stderr := runCLI(t, "connect", kc, "--context", "ctx-a", "--destination-context", "ctx-b")
	if code != 0 || !strings.Contains(stdout, "Connected:") || !strings.Contains(stdout, "a (context ctx-a) reads b (context ctx-b)") || !strings.Contains(stderr, "checking that cluster \"b\"") ||
		!strings.Contains(stderr, `cluster "b" (context "ctx-b") lets a in (after`) || strings.Contains(stderr, "Note") {
		t.Fatalf("connect: exit %d\n%s%s", code, stdout, stderr)
	}
	va, vb := versions(t, cl.a), versions(t, cl.b)
	if out := mustRun(t, "connect", kc, "--context", "ctx-a", "--destination-context", "ctx-b"); !strings.Contains(out, "Nothing to change") {
		t.Errorf("second connect:\n%s", out)
	}
	if !maps.Equal(va, versions(t, cl.a)) || !maps.Equal(vb, versions(t, cl.b)) {
		t.Error("second connect changed objects")
	}

	// No agent runs here: status shows the configured clusters, not ready.
	var r meshops.StatusReport
	if err := json.Unmarshal([]byte(mustRun(t, "status", kc, "--context", "ctx-a", "-o", "json")), &r); err != nil {
		t.Fatal(err)
	}
	if r.Ready || len(r.Clusters) != 2 || !r.Clusters[0].Configured || r.Clusters[1].Name != "b" || r.ReadableBy[0] != "b" {
		t.Errorf("status: %+v", r)
	}
	code, stdout, stderr = runCLI(t, "status", kc, "--context", "ctx-a", "--wait", "--wait-duration", "3s")
	if code == 0 || !strings.Contains(stderr, `context "ctx-a" is not ready after 3s`) || !strings.Contains(stderr, "no agent reports its status") || !strings.Contains(stderr, "[  0s] waiting: a 0/0 synced, b 0/0 synced") || !strings.Contains(stdout, "Not ready") {
		t.Errorf("status --wait: exit %d\n%s%s", code, stdout, stderr)
	}

	// Agents report every cluster synced: --wait returns at once.
	hb := metav1.Now()
	ready := func(name string, id int32) v1alpha1.MeshAgentCluster {
		return v1alpha1.MeshAgentCluster{Name: name, ClusterID: id, Connected: true, Ready: true}
	}
	putAgent(t, cl.aConfig, v1alpha1.MeshAgentStatus{NodeName: "node-1", ClusterName: "a", LastHeartbeatTime: &hb, Clusters: []v1alpha1.MeshAgentCluster{ready("a", 1), ready("b", 2)}})
	out = mustRun(t, "status", kc, "--context", "ctx-a", "--wait")
	if !strings.Contains(out, "b         2   yes         1/1        1/1") || !strings.Contains(out, "Ready: every configured cluster is connected and synced on every agent.") {
		t.Errorf("status --wait:\n%s", out)
	}

	out = mustRun(t, "disconnect", kc, "--context", "ctx-a", "--destination-context", "ctx-b")
	if !strings.Contains(out, "Disconnected:") || !strings.Contains(out, "a (context ctx-a) no longer reads b (context ctx-b)") {
		t.Errorf("disconnect:\n%s", out)
	}
}

// TestCLIBadInput tries what a new user might, and checks each is refused
// with a clear message, a non-zero exit and no object changed.
func TestCLIBadInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, cl cliClusters, kc string)
		args  []string
		want  []string
	}{
		{"unknown context", nil, []string{"connect", "--context", "ctx-a", "--destination-context", "ctx-c"},
			[]string{`unknown context "ctx-c"`, "available contexts: ctx-a, ctx-a-again, ctx-b"}},
		{"connect to itself", func(t *testing.T, cl cliClusters, kc string) {
			mustRun(t, "enable", kc, "--context", "ctx-a", "--cluster-name", "a", "--cluster-id", "1", "--mesh-endpoint", "https://127.0.0.1:1")
		}, []string{"connect", "--context", "ctx-a", "--destination-context", "ctx-a-again"},
			[]string{`contexts "ctx-a" and "ctx-a-again" are the same cluster`}},
		{"not enabled", func(t *testing.T, cl cliClusters, kc string) {
			mustRun(t, "enable", kc, "--context", "ctx-a", "--cluster-name", "a", "--cluster-id", "1", "--mesh-endpoint", "https://127.0.0.1:1")
		}, []string{"connect", "--context", "ctx-a", "--destination-context", "ctx-b"},
			[]string{`context "ctx-b" is not enabled for the mesh`, "isthmus enable --context ctx-b"}},
		{"duplicate cluster ID", func(t *testing.T, cl cliClusters, kc string) {
			mustRun(t, "enable", kc, "--context", "ctx-a", "--cluster-name", "a", "--cluster-id", "5", "--mesh-endpoint", "https://127.0.0.1:1")
			mustRun(t, "enable", kc, "--context", "ctx-b", "--cluster-name", "b", "--cluster-id", "5", "--mesh-endpoint", "https://127.0.0.1:1")
		}, []string{"connect", "--context", "ctx-a", "--destination-context", "ctx-b"},
			[]string{"both have cluster ID 5"}},
		{"duplicate cluster name", func(t *testing.T, cl cliClusters, kc string) {
			mustRun(t, "enable", kc, "--context", "ctx-a", "--cluster-name", "a", "--cluster-id", "1", "--mesh-endpoint", "https://127.0.0.1:1")
			mustRun(t, "enable", kc, "--context", "ctx-b", "--cluster-name", "a", "--cluster-id", "2", "--mesh-endpoint", "https://127.0.0.1:1")
		}, []string{"connect", "--context", "ctx-a", "--destination-context", "ctx-b"},
			[]string{`contexts "ctx-a" and "ctx-b" are both enabled as cluster "a"`}},
		{"overlapping pod CIDRs", func(t *testing.T, cl cliClusters, kc string) {
			mustRun(t, "enable", kc, "--context", "ctx-a", "--cluster-name", "a", "--cluster-id", "1", "--mesh-endpoint", "https://127.0.0.1:1")
			mustRun(t, "enable", kc, "--context", "ctx-b", "--cluster-name", "b", "--cluster-id", "2", "--mesh-endpoint", "https://127.0.0.1:1")
			addNode(t, cl.b, "overlapping", "10.1.0.0/16")
		}, []string{"connect", "--context", "ctx-a", "--destination-context", "ctx-b"},
			[]string{"pod CIDR 10.1.0.0/24 of cluster \"a\"", "overlaps pod CIDR 10.1.0.0/16 of cluster \"b\""}},
		{"unreachable mesh endpoint", func(t *testing.T, cl cliClusters, kc string) {
			mustRun(t, "enable", kc, "--context", "ctx-a", "--cluster-name", "a", "--cluster-id", "1", "--mesh-endpoint", "https://127.0.0.1:1")
			mustRun(t, "enable", kc, "--context", "ctx-b", "--cluster-name", "b", "--cluster-id", "2", "--mesh-endpoint", "https://"+silentListener(t))
		}, []string{"connect", "--context", "ctx-a", "--destination-context", "ctx-b", "--connection-mode", "unicast", "--endpoint-timeout", "1s"},
			[]string{`no mesh endpoint of cluster "b" (context "ctx-b") answers: https://127.0.0.1:`, "no answer within 1s", "--skip-endpoint-check"}},
		{"enable with another ID", func(t *testing.T, cl cliClusters, kc string) {
			mustRun(t, "enable", kc, "--context", "ctx-a", "--cluster-name", "a", "--cluster-id", "1")
		}, []string{"enable", "--context", "ctx-a", "--cluster-name", "a", "--cluster-id", "9"},
			[]string{`cluster-id "1" (you asked for --cluster-id 9)`, "nothing was changed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := cliSetup(t)
			kc := "--kubeconfig=" + cl.kubeconfig
			if tc.setup != nil {
				tc.setup(t, cl, kc)
			}
			va, vb := versions(t, cl.a), versions(t, cl.b)
			code, stdout, stderr := runCLI(t, append([]string{tc.args[0], kc}, tc.args[1:]...)...)
			if code == 0 {
				t.Fatalf("exit 0:\n%s%s", stdout, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if !maps.Equal(va, versions(t, cl.a)) || !maps.Equal(vb, versions(t, cl.b)) {
				t.Error("objects changed")
			}
		})
	}
}
