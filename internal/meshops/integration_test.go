package meshops

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd"
	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd/meshetcdtest"
	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/meshops/meshopstest"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

// Two clusters' control planes, shared by the tests of this binary. The
// mesh objects live in the fixed namespace isthmus-system, so the tests
// run one after another and each starts from an empty one.
var (
	kubeA = testenv.New(testenv.Options{})
	kubeB = testenv.New(testenv.Options{})
	// kubeC starts only for the tests of three clusters.
	kubeC = testenv.New(testenv.Options{})
)

func TestMain(m *testing.M) { testenv.Main(m, kubeA, kubeB, kubeC) }

// testCluster is one cluster of an integration test.
type testCluster struct {
	*Cluster
	client kubernetes.Interface
}

// twoClusters returns clusters a and b with empty mesh namespaces and one
// Node each, with pod CIDRs 10.1.0.0/24 and 10.2.0.0/24.
func twoClusters(t testing.TB) (a, b testCluster) {
	t.Helper()
	return openTestCluster(t, kubeA, "ctx-a", "10.1.0.0/24"), openTestCluster(t, kubeB, "ctx-b", "10.2.0.0/24")
}

// openTestCluster opens env's cluster as context, with an empty mesh
// namespace and a Node with pod CIDR cidr.
func openTestCluster(t testing.TB, env *testenv.Env, context, cidr string) testCluster {
	t.Helper()
	k := env.Kube(t)
	c, err := NewCluster(context, k.Config)
	if err != nil {
		t.Fatal(err)
	}
	resetMesh(t, k.Client)
	t.Cleanup(func() { resetMesh(t, k.Client) })
	addNode(t, k.Client, context+"-node", cidr)
	return testCluster{Cluster: c, client: k.Client}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// resetMesh deletes every Secret and ConfigMap of the mesh namespace.
func resetMesh(t testing.TB, client kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	ns := meshconfig.Namespace
	if err := client.CoreV1().Secrets(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().ConfigMaps(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
}

// addNode registers a Node with a pod CIDR until the test ends.
func addNode(t testing.TB, client kubernetes.Interface, name, cidr string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
	if _, err := client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// meshObjects returns the data of every Secret and ConfigMap in the mesh
// namespace, by "kind/name", and their resourceVersions.
func meshObjects(t *testing.T, client kubernetes.Interface) (data map[string]map[string]string, versions map[string]string) {
	t.Helper()
	ctx := context.Background()
	data, versions = map[string]map[string]string{}, map[string]string{}
	secrets, err := client.CoreV1().Secrets(meshconfig.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		d := map[string]string{}
		for k, v := range s.Data {
			d[k] = string(v)
		}
		data["Secret/"+s.Name], versions["Secret/"+s.Name] = d, s.ResourceVersion
	}
	cms, err := client.CoreV1().ConfigMaps(meshconfig.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cms.Items {
		d := maps.Clone(c.Data)
		if d == nil {
			d = map[string]string{}
		}
		data["ConfigMap/"+c.Name], versions["ConfigMap/"+c.Name] = d, c.ResourceVersion
	}
	return data, versions
}

func enable(t testing.TB, c testCluster, name string, id uint32, endpoints ...string) *EnableResult {
	t.Helper()
	res, err := Enable(testCtx(t), c.Cluster, EnableOptions{ClusterName: name, ClusterID: id, MeshEndpoints: endpoints})
	if err != nil {
		t.Fatalf("enable %s: %v", name, err)
	}
	return res
}

func getSecret(t testing.TB, client kubernetes.Interface, name string) *corev1.Secret {
	t.Helper()
	s, err := client.CoreV1().Secrets(meshconfig.Namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEnable(t *testing.T) {
	a, _ := twoClusters(t)
	res, err := Enable(testCtx(t), a.Cluster, EnableOptions{ClusterName: "a", ClusterID: 7, MeshEndpoints: []string{"https://mesh-a.example:32379"}, ServerSANs: []string{"10.9.9.9"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changes) == 0 || len(res.Notes) != 0 {
		t.Errorf("changes %v, notes %v", res.Changes, res.Notes)
	}

	caSecret := getSecret(t, a.client, meshconfig.CASecret)
	ca, err := certs.LoadCA(caSecret.Data["tls.crt"], caSecret.Data["tls.key"])
	if err != nil {
		t.Fatal(err)
	}
	check := func(secret, cn string, usage x509.ExtKeyUsage) *x509.Certificate {
		t.Helper()
		s := getSecret(t, a.client, secret)
		cert, reason := keepable(ca, s.Data["tls.crt"], s.Data["tls.key"], cn, usage, time.Now())
		if reason != "" {
			t.Fatalf("Secret %s: %s", secret, reason)
		}
		if string(s.Data["ca.crt"]) != string(ca.CertPEM()) || s.Type != corev1.SecretTypeTLS {
			t.Errorf("Secret %s: type %s, ca.crt is not the CA", secret, s.Type)
		}
		return cert
	}
	server := check(meshconfig.ServerCertSecret, certs.ServerCommonName, x509.ExtKeyUsageServerAuth)
	for _, name := range []string{"isthmus-apiserver.isthmus-system.svc", "isthmus-apiserver.isthmus-system.svc.cluster.local", "localhost", "mesh-a.example"} {
		if err := server.VerifyHostname(name); err != nil {
			t.Errorf("server certificate: %v", err)
		}
	}
	for _, ip := range []string{"127.0.0.1", "10.9.9.9"} {
		if err := server.VerifyHostname(ip); err != nil {
			t.Errorf("server certificate: %v", err)
		}
	}
	check(meshconfig.AdminCertSecret, "admin-a", x509.ExtKeyUsageClientAuth)
	local := getSecret(t, a.client, meshconfig.LocalCertSecret)
	check(meshconfig.LocalCertSecret, "local-a", x509.ExtKeyUsageClientAuth)

	cm, err := a.client.CoreV1().ConfigMaps(meshconfig.Namespace).Get(context.Background(), meshconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"cluster-name": "a", "cluster-id": "7", "max-connected-clusters": "255", "mesh-endpoints": "https://mesh-a.example:32379"}
	if !maps.Equal(cm.Data, want) {
		t.Errorf("isthmus-config = %v, want %v", cm.Data, want)
	}
	entries, errs := meshconfig.ParseEntries(getSecret(t, a.client, meshconfig.ClusterMeshSecret).Data)
	own := meshconfig.ClusterEntry{Cluster: "a", Endpoints: []string{"https://mesh-a.example:32379"}, CA: ca.CertPEM(), Cert: local.Data["tls.crt"], Key: local.Data["tls.key"]}
	if len(errs) != 0 || len(entries) != 1 || !entries["a"].Equal(own) {
		t.Errorf("clustermesh entries %v, %v; want only the own entry", entries, errs)
	}

	// Again: nothing changes.
	_, before := meshObjects(t, a.client)
	res, err = Enable(testCtx(t), a.Cluster, EnableOptions{ClusterName: "a", ClusterID: 7})
	if err != nil {
		t.Fatal(err)
	}
	if _, after := meshObjects(t, a.client); len(res.Changes) != 0 || !maps.Equal(before, after) {
		t.Errorf("second enable changed %v; versions %v -> %v", res.Changes, before, after)
	}
}

func TestEnableRefusesToChangeIdentity(t *testing.T) {
	a, _ := twoClusters(t)
	enable(t, a, "a", 1)
	_, before := meshObjects(t, a.client)
	for _, opts := range []EnableOptions{
		{ClusterName: "a", ClusterID: 2},
		{ClusterName: "x", ClusterID: 1},
		{ClusterName: "a", ClusterID: 1, MaxConnectedClusters: 511},
	} {
		_, err := Enable(testCtx(t), a.Cluster, opts)
		if !errors.Is(err, ErrAlreadyEnabledOtherwise) {
			t.Fatalf("enable %+v: %v", opts, err)
		}
		t.Log(err)
	}
	_, err := Enable(testCtx(t), a.Cluster, EnableOptions{ClusterName: "a", ClusterID: 2})
	if !strings.Contains(err.Error(), `cluster-id "1" (you asked for --cluster-id 2)`) {
		t.Errorf("message does not name both IDs: %v", err)
	}
	if _, after := meshObjects(t, a.client); !maps.Equal(before, after) {
		t.Errorf("a refused enable changed objects: %v -> %v", before, after)
	}
}

func TestEnableKeepsTheCA(t *testing.T) {
	a, _ := twoClusters(t)
	ca, err := certs.NewCA("brought-along", 0)
	if err != nil {
		t.Fatal(err)
	}
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.CASecret, Namespace: meshconfig.Namespace}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": ca.CertPEM(), "tls.key": ca.KeyPEM()}}
	if _, err := a.client.CoreV1().Secrets(meshconfig.Namespace).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	enable(t, a, "a", 1)
	if got := getSecret(t, a.client, meshconfig.CASecret); string(got.Data["tls.crt"]) != string(ca.CertPEM()) {
		t.Fatal("the CA was replaced")
	}
	if _, reason := keepable(ca, getSecret(t, a.client, meshconfig.LocalCertSecret).Data["tls.crt"], getSecret(t, a.client, meshconfig.LocalCertSecret).Data["tls.key"], "local-a", x509.ExtKeyUsageClientAuth, time.Now()); reason != "" {
		t.Errorf("local certificate not from the existing CA: %s", reason)
	}

	// A CA Secret that holds no CA is reported and left alone.
	resetMesh(t, a.client)
	s.Data = map[string][]byte{"tls.crt": []byte("garbage"), "tls.key": ca.KeyPEM()}
	if _, err := a.client.CoreV1().Secrets(meshconfig.Namespace).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, before := meshObjects(t, a.client)
	_, err = Enable(testCtx(t), a.Cluster, EnableOptions{ClusterName: "a", ClusterID: 1})
	if err == nil || !strings.Contains(err.Error(), "holds no usable CA") {
		t.Fatalf("enable over a broken CA Secret: %v", err)
	}
	if _, after := meshObjects(t, a.client); !maps.Equal(before, after) {
		t.Errorf("objects changed: %v -> %v", before, after)
	}
}

func TestEnableRenewsAndAddsNames(t *testing.T) {
	a, _ := twoClusters(t)
	enable(t, a, "a", 1)
	caSecret := getSecret(t, a.client, meshconfig.CASecret)
	ca, err := certs.LoadCA(caSecret.Data["tls.crt"], caSecret.Data["tls.key"])
	if err != nil {
		t.Fatal(err)
	}
	// The admin certificate is due: issued 300 days ago for a year.
	due, err := ca.Issue(certs.Request{CommonName: "admin-a", Usage: certs.UsageClient, NotBefore: time.Now().Add(-300 * 24 * time.Hour), Validity: 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s := getSecret(t, a.client, meshconfig.AdminCertSecret)
	s.Data["tls.crt"], s.Data["tls.key"] = due.CertPEM, due.KeyPEM
	if _, err := a.client.CoreV1().Secrets(meshconfig.Namespace).Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	localBefore := getSecret(t, a.client, meshconfig.LocalCertSecret).ResourceVersion
	res, err := Enable(testCtx(t), a.Cluster, EnableOptions{ClusterName: "a", ClusterID: 1, ServerSANs: []string{"mesh.example"}})
	if err != nil {
		t.Fatal(err)
	}
	var changed []string
	for _, c := range res.Changes {
		changed = append(changed, c.Object)
	}
	slices.Sort(changed)
	if want := []string{"Secret isthmus-system/isthmus-apiserver-admin-cert", "Secret isthmus-system/isthmus-apiserver-server-cert"}; !slices.Equal(changed, want) {
		t.Errorf("changed %v, want %v", changed, want)
	}
	if getSecret(t, a.client, meshconfig.LocalCertSecret).ResourceVersion != localBefore {
		t.Error("the local certificate, still good, was reissued")
	}
	server, err := certs.ParseCertificate(getSecret(t, a.client, meshconfig.ServerCertSecret).Data["tls.crt"])
	if err != nil {
		t.Fatal(err)
	}
	if server.VerifyHostname("mesh.example") != nil || server.VerifyHostname("isthmus-apiserver.isthmus-system.svc") != nil {
		t.Errorf("server certificate names %v", server.DNSNames)
	}
	// Names only accumulate: enable without --server-san keeps it.
	if res := enable(t, a, "a", 1); len(res.Changes) != 0 {
		t.Errorf("enable without the SAN changed %v", res.Changes)
	}
}

// startAPIServer runs c's real mesh apiserver with what enable wrote.
func startAPIServer(t testing.TB, c testCluster) *meshopstest.APIServer {
	t.Helper()
	return meshopstest.StartAPIServer(t, c.RESTConfig(), meshopstest.APIServerOptions{})
}

// startAPIServers runs the real mesh apiservers of a and b concurrently.
func startAPIServers(t testing.TB, a, b testCluster) (apiA, apiB *meshopstest.APIServer) {
	t.Helper()
	s := meshopstest.StartAPIServers(t, meshopstest.APIServerOptions{}, a.RESTConfig(), b.RESTConfig())
	return s[0], s[1]
}

// connected enables a and b, runs their mesh apiservers and connects them.
func connected(t testing.TB, a, b testCluster) (apiA, apiB *meshopstest.APIServer) {
	t.Helper()
	enable(t, a, "a", 1)
	enable(t, b, "b", 2)
	apiA, apiB = startAPIServers(t, a, b)
	var progress []string
	res, err := Connect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, ConnectOptions{Progress: func(m string) { progress = append(progress, m) }})
	if err != nil {
		t.Fatalf("connect: %v\nnotes: %v", err, res.Notes)
	}
	if len(progress) == 0 {
		t.Error("no progress reported")
	}
	want := []Connection{{"a", "ctx-a", "b", "ctx-b"}, {"b", "ctx-b", "a", "ctx-a"}}
	if !slices.Equal(res.Connections, want) {
		t.Errorf("connections %v, want %v", res.Connections, want)
	}
	return apiA, apiB
}

// entryClient dials the cluster that entry names with the entry's
// certificate, as an agent does.
func entryClient(t testing.TB, client kubernetes.Interface, cluster string) (meshconfig.ClusterEntry, bool) {
	t.Helper()
	entries, errs := meshconfig.ParseEntries(getSecret(t, client, meshconfig.ClusterMeshSecret).Data)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	e, ok := entries[cluster]
	return e, ok
}

// eventually retries cond every 20ms until it returns nil or timeout
// passes, then fails t with cond's last error.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
	}
}

// TestConnectAndDisconnect runs the whole story on real mesh apiservers:
// enable, the apiservers publish their endpoints; connect grants, waits
// until the grants are live and writes the entries, so the issued
// certificate reads the remote state at once, and may not write;
// disconnect removes both, and the apiserver revokes the certificate.
func TestConnectAndDisconnect(t *testing.T) {
	a, b := twoClusters(t)
	enable(t, a, "a", 1)
	enable(t, b, "b", 2)
	apiA, apiB := startAPIServers(t, a, b)
	// The apiservers published their endpoints after enable, which leaves
	// the own entries to connect.
	beforeA, _ := meshObjects(t, a.client)
	beforeB, _ := meshObjects(t, b.client)
	if _, ok := beforeA["Secret/"+meshconfig.ClusterMeshSecret]; ok {
		t.Fatal("enable without an endpoint wrote a clustermesh Secret")
	}
	if got := beforeB["ConfigMap/"+meshconfig.ConfigMapName][meshconfig.KeyMeshEndpoints]; got != apiB.Endpoint {
		t.Fatalf("b's published mesh endpoints %q, want %q", got, apiB.Endpoint)
	}

	var progress []string
	res, err := Connect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, ConnectOptions{Progress: func(m string) { progress = append(progress, m) }})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	// The grants are live before Connect returns: the first read of an
	// agent that picks up the entry now succeeds.
	ctx := testCtx(t)
	e, _ := entryClient(t, a.client, "b")
	cli := meshopstest.Dial(t, e.Endpoints[0], e.CA, e.Cert, e.Key)
	got, err := cli.Get(ctx, protocol.NodeKey("b", "ctx-b-node"))
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("a's first read of b's nodes right after connect: %v, %v", got, err)
	}
	t.Logf("connect wrote %v; progress:\n%s", res.Changes, strings.Join(progress, "\n"))
	if len(res.Notes) != 0 {
		t.Errorf("notes: %v", res.Notes)
	}
	for _, want := range []string{`waiting until cluster "b" (context "ctx-b") lets a in as user remote-a`, `cluster "a" (context "ctx-a") lets b in (after `} {
		if !slices.ContainsFunc(progress, func(m string) bool { return strings.HasPrefix(m, want) }) {
			t.Errorf("no progress %q", want)
		}
	}
	for _, side := range []struct {
		self, other     testCluster
		name, otherName string
		apiOther        *meshopstest.APIServer
	}{
		{a, b, "a", "b", apiB},
		{b, a, "b", "a", apiA},
	} {
		readers, err := side.other.client.CoreV1().ConfigMaps(meshconfig.Namespace).Get(context.Background(), meshconfig.RemoteReadersConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]string{side.name: "remote-" + side.name}; !maps.Equal(readers.Data, want) {
			t.Errorf("remote readers of %s = %v, want %v", side.otherName, readers.Data, want)
		}
		e, ok := entryClient(t, side.self.client, side.otherName)
		if !ok {
			t.Fatalf("%s has no entry for %s", side.name, side.otherName)
		}
		if !slices.Equal(e.Endpoints, []string{side.apiOther.Endpoint}) || string(e.CA) != string(side.apiOther.CA.CertPEM()) {
			t.Errorf("entry %s in %s: endpoints %v", side.otherName, side.name, e.Endpoints)
		}
		if _, reason := keepable(side.apiOther.CA, e.Cert, e.Key, "remote-"+side.name, x509.ExtKeyUsageClientAuth, time.Now()); reason != "" {
			t.Errorf("entry %s in %s: certificate %s", side.otherName, side.name, reason)
		}
		if _, ok := entryClient(t, side.self.client, side.name); !ok {
			t.Errorf("%s has no own entry", side.name)
		}
	}

	// The issued certificate reads what a remote reader reads, and may
	// not write.
	if _, err := cli.Get(ctx, protocol.ClusterConfigKey("b")); err != nil {
		t.Errorf("a reads b's cluster config: %v", err)
	}
	if _, err := cli.Put(ctx, protocol.NodeKey("b", "intruder"), "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("a writes into b: %v, want permission denied", err)
	}
	if _, err := cli.Get(ctx, protocol.ClusterConfigKey("a")); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("a reads another cluster's config from b: %v, want permission denied", err)
	}
	own, _ := entryClient(t, a.client, "a")
	if got, err := meshopstest.Dial(t, own.Endpoints[0], own.CA, own.Cert, own.Key).Get(ctx, protocol.NodeKey("a", "ctx-a-node")); err != nil || len(got.Kvs) != 1 {
		t.Errorf("a's agents read a's own state: %v, %v", got, err)
	}

	// Twice: nothing changes.
	_, versionsA := meshObjects(t, a.client)
	_, versionsB := meshObjects(t, b.client)
	res, err = Connect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, againA := meshObjects(t, a.client)
	_, againB := meshObjects(t, b.client)
	if len(res.Changes) != 0 || !maps.Equal(versionsA, againA) || !maps.Equal(versionsB, againB) {
		t.Errorf("second connect changed %v", res.Changes)
	}

	// Disconnect removes exactly what connect added (the own entries
	// stay: connect only completed them), and revokes the access.
	res, err = Disconnect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, DisconnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changes) != 4 {
		t.Errorf("disconnect changed %v, want 2 Secrets and 2 ConfigMaps", res.Changes)
	}
	for _, side := range []struct {
		c      testCluster
		name   string
		before map[string]map[string]string
	}{{a, "a", beforeA}, {b, "b", beforeB}} {
		after, _ := meshObjects(t, side.c.client)
		if readers := after["ConfigMap/"+meshconfig.RemoteReadersConfigMap]; len(readers) != 0 {
			t.Errorf("%s still grants %v", side.name, readers)
		}
		delete(after, "ConfigMap/"+meshconfig.RemoteReadersConfigMap)
		entries, _ := meshconfig.ParseEntries(toBytes(after["Secret/"+meshconfig.ClusterMeshSecret]))
		if len(entries) != 1 || entries[side.name].Cluster != side.name {
			t.Errorf("%s's entries after disconnect: %v", side.name, slices.Collect(maps.Keys(entries)))
		}
		delete(after, "Secret/"+meshconfig.ClusterMeshSecret)
		if !maps.EqualFunc(side.before, after, maps.Equal) {
			t.Errorf("%s: objects other than the connection's changed", side.name)
		}
	}
	// b's apiserver deletes user remote-a: the certificate a held, still
	// valid, is refused, on the connection it had open too.
	eventually(t, 30*time.Second, "b refusing a's certificate", func() error {
		_, err := cli.Get(ctx, protocol.NodeKey("b", "ctx-b-node"))
		if errors.Is(err, rpctypes.ErrPermissionDenied) {
			return nil
		}
		return fmt.Errorf("read: %v", err)
	})
	res, err = Disconnect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, DisconnectOptions{})
	if err != nil || len(res.Changes) != 0 {
		t.Errorf("second disconnect: %v, %v", res.Changes, err)
	}
}

// TestConnectGrantNotLive: the etcd users of cluster b are managed outside
// its mesh apiserver (--etcd-manage-auth=false), so no one creates the
// user connect grants. Connect waits for it, then fails saying what to
// check and writes no entry, so no agent holds a certificate that is
// refused; once the user exists, connect again completes the connection.
func TestConnectGrantNotLive(t *testing.T) {
	a, b := twoClusters(t)
	enable(t, a, "a", 1)
	startAPIServer(t, a)
	// b's external etcd; enable keeps the CA it is given, which is the
	// etcd's.
	ext := meshetcdtest.Start(t, "b")
	ca := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.CASecret, Namespace: meshconfig.Namespace}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": ext.CA.CertPEM(), "tls.key": ext.CA.KeyPEM()}}
	if _, err := b.client.CoreV1().Secrets(meshconfig.Namespace).Create(context.Background(), ca, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	enable(t, b, "b", 2)
	meshopstest.StartAPIServer(t, b.RESTConfig(), meshopstest.APIServerOptions{ExternalEtcd: ext.Endpoints()})
	beforeA, _ := meshObjects(t, a.client)

	var progress []string
	res, err := Connect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, ConnectOptions{
		Mode: Unicast, GrantTimeout: 2 * time.Second, Progress: func(m string) { progress = append(progress, m) }})
	t.Logf("progress:\n%s\nerror: %v", strings.Join(progress, "\n"), err)
	var grantErr *GrantError
	if !errors.As(err, &grantErr) || len(grantErr.Problems) != 1 {
		t.Fatalf("connect: %v, want a GrantError with one problem", err)
	}
	for _, want := range []string{
		`cluster "b" (context "ctx-b") did not let a in as etcd user remote-a within 2s (last answer: ` + ext.Endpoints()[0] + `: etcdserver: `,
		"Check that the mesh apiserver of cluster \"b\" (context \"ctx-b\") runs",
		"ConfigMap isthmus-system/isthmus-remote-readers",
		"--etcd-manage-auth=false), create user remote-a with role remote",
		"No clustermesh entry was written",
		"--grant-timeout 0",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
	// The grant is written (b's remote-readers), no entry is.
	afterA, _ := meshObjects(t, a.client)
	if !maps.EqualFunc(beforeA, afterA, maps.Equal) {
		t.Errorf("a's objects changed although connect failed:\nbefore %v\nafter  %v", beforeA, afterA)
	}
	readers, err := b.client.CoreV1().ConfigMaps(meshconfig.Namespace).Get(context.Background(), meshconfig.RemoteReadersConfigMap, metav1.GetOptions{})
	if err != nil || readers.Data["a"] != "remote-a" {
		t.Fatalf("b's remote readers: %v, %v", readers, err)
	}

	// The operator creates the user: connect completes the connection.
	ctx := testCtx(t)
	if err := (meshetcd.Access{Cluster: "b", RemoteClusters: []string{"a"}}).Apply(ctx, ext.Admin); err != nil {
		t.Fatal(err)
	}
	res, err = Connect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, ConnectOptions{Mode: Unicast, GrantTimeout: 2 * time.Second})
	if err != nil || len(res.Changes) == 0 {
		t.Fatalf("connect again: changes %v, %v", res.Changes, err)
	}
	e, ok := entryClient(t, a.client, "b")
	if !ok {
		t.Fatal("a has no entry for b")
	}
	if _, err := meshopstest.Dial(t, e.Endpoints[0], e.CA, e.Cert, e.Key).Get(ctx, protocol.ClusterConfigKey("b")); err != nil {
		t.Errorf("a reads b with its new entry: %v", err)
	}
}

// TestConnectDoesNotWait: with SkipEndpointCheck (the targets may be out
// of reach) and in a dry run, connect does not dial the targets, and so
// does not wait for the grants either.
func TestConnectDoesNotWait(t *testing.T) {
	a, b := twoClusters(t)
	enable(t, a, "a", 1, "https://127.0.0.1:1")
	enable(t, b, "b", 2, "https://127.0.0.1:1")
	for _, opts := range []ConnectOptions{{SkipEndpointCheck: true, DryRun: true}, {SkipEndpointCheck: true}} {
		var progress []string
		opts.Progress = func(m string) { progress = append(progress, m) }
		res, err := Connect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, opts)
		if err != nil || len(res.Changes) == 0 || len(res.Notes) != 0 {
			t.Fatalf("connect %+v: changes %v, notes %v, %v", opts, res.Changes, res.Notes, err)
		}
		if slices.ContainsFunc(progress, func(m string) bool { return strings.Contains(m, "waiting") }) {
			t.Errorf("connect %+v waited: %q", opts, progress)
		}
	}
	if _, ok := entryClient(t, a.client, "b"); !ok {
		t.Error("a has no entry for b")
	}
}

func toBytes(m map[string]string) map[string][]byte {
	out := map[string][]byte{}
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out
}

func TestConnectRenewsOnlyWhatIsDue(t *testing.T) {
	a, b := twoClusters(t)
	connected(t, a, b)
	// Make a's certificate for b due: issued 300 days ago for a year.
	secret := getSecret(t, a.client, meshconfig.ClusterMeshSecret)
	entries, _ := meshconfig.ParseEntries(secret.Data)
	caB, err := certs.LoadCA(getSecret(t, b.client, meshconfig.CASecret).Data["tls.crt"], getSecret(t, b.client, meshconfig.CASecret).Data["tls.key"])
	if err != nil {
		t.Fatal(err)
	}
	due, err := caB.Issue(certs.Request{CommonName: "remote-a", NotBefore: time.Now().Add(-300 * 24 * time.Hour), Validity: 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e := entries["b"]
	e.Cert, e.Key = due.CertPEM, due.KeyPEM
	if err := meshconfig.PutEntry(secret.Data, e); err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.CoreV1().Secrets(meshconfig.Namespace).Update(context.Background(), secret, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, versionsB := meshObjects(t, b.client)
	res, err := Connect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changes) != 1 || res.Changes[0].Context != "ctx-a" {
		t.Errorf("changes %v, want a's clustermesh Secret only", res.Changes)
	}
	if _, after := meshObjects(t, b.client); !maps.Equal(versionsB, after) {
		t.Error("b changed")
	}
	renewed, _ := entryClient(t, a.client, "b")
	if string(renewed.Cert) == string(due.CertPEM) {
		t.Error("the due certificate was kept")
	}
}

// TestConnectRefuses checks that every refused connect writes nothing.
func TestConnectRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, a, b testCluster) ConnectOptions
		want  string
	}{
		{"not enabled", func(t *testing.T, a, b testCluster) ConnectOptions {
			enable(t, a, "a", 1, "https://127.0.0.1:1")
			return ConnectOptions{}
		}, "run `isthmus enable --context ctx-b --cluster-name <name> --cluster-id <id>` first"},
		{"duplicate cluster ID", func(t *testing.T, a, b testCluster) ConnectOptions {
			enable(t, a, "a", 1, "https://127.0.0.1:1")
			enable(t, b, "b", 1, "https://127.0.0.1:1")
			return ConnectOptions{}
		}, `cluster "a" (context "ctx-a") and cluster "b" (context "ctx-b") both have cluster ID 1`},
		{"overlapping pod CIDRs", func(t *testing.T, a, b testCluster) ConnectOptions {
			enable(t, a, "a", 1, "https://127.0.0.1:1")
			enable(t, b, "b", 2, "https://127.0.0.1:1")
			addNode(t, b.client, "ctx-b-node-2", "10.1.0.128/25")
			return ConnectOptions{}
		}, `pod CIDR 10.1.0.0/24 of cluster "a" (context "ctx-a") overlaps pod CIDR 10.1.0.128/25 of cluster "b" (context "ctx-b")`},
		{"unreachable endpoint", func(t *testing.T, a, b testCluster) ConnectOptions {
			enable(t, a, "a", 1)
			startAPIServer(t, a)
			enable(t, b, "b", 2, "https://127.0.0.1:1")
			return ConnectOptions{EndpointTimeout: time.Second}
		}, `no mesh endpoint of cluster "b" (context "ctx-b") answers: https://127.0.0.1:1: connection refused`},
		{"endpoint of another cluster", func(t *testing.T, a, b testCluster) ConnectOptions {
			enable(t, a, "a", 1)
			apiA := startAPIServer(t, a)
			enable(t, b, "b", 2, apiA.Endpoint)
			return ConnectOptions{}
		}, "presents a certificate not signed by the mesh CA of cluster \"b\""},
		{"no endpoint", func(t *testing.T, a, b testCluster) ConnectOptions {
			enable(t, a, "a", 1, "https://127.0.0.1:1")
			enable(t, b, "b", 2)
			return ConnectOptions{SkipEndpointCheck: true}
		}, `cluster "b" (context "ctx-b") publishes no mesh endpoint`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := twoClusters(t)
			opts := tc.setup(t, a, b)
			_, beforeA := meshObjects(t, a.client)
			_, beforeB := meshObjects(t, b.client)
			_, err := Connect(testCtx(t), a.Cluster, []*Cluster{b.Cluster}, opts)
			var ce *CheckError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) || !strings.HasSuffix(err.Error(), "Nothing was changed.") {
				t.Fatalf("connect: %v\nwant a CheckError with %q", err, tc.want)
			}
			_, afterA := meshObjects(t, a.client)
			_, afterB := meshObjects(t, b.client)
			if !maps.Equal(beforeA, afterA) || !maps.Equal(beforeB, afterB) {
				t.Errorf("objects changed: a %v -> %v, b %v -> %v", beforeA, afterA, beforeB, afterB)
			}
		})
	}
}

func TestConnectSameClusterTwice(t *testing.T) {
	a, _ := twoClusters(t)
	enable(t, a, "a", 1, "https://127.0.0.1:1")
	again, err := NewCluster("ctx-a-again", a.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Connect(testCtx(t), a.Cluster, []*Cluster{again}, ConnectOptions{})
	if err == nil || !strings.Contains(err.Error(), `contexts "ctx-a" and "ctx-a-again" are the same cluster`) {
		t.Fatalf("connect to itself: %v", err)
	}
}

func TestForget(t *testing.T) {
	a, b := twoClusters(t)
	connected(t, a, b)
	_, versionsB := meshObjects(t, b.client)
	if _, err := Forget(testCtx(t), a.Cluster, []string{"a"}, DisconnectOptions{}); err == nil || !strings.Contains(err.Error(), "never removed") {
		t.Errorf("forget the own entry: %v", err)
	}
	res, err := Forget(testCtx(t), a.Cluster, []string{"b"}, DisconnectOptions{})
	if err != nil || len(res.Changes) != 1 || len(res.Connections) != 1 {
		t.Fatalf("forget b: %+v, %v", res, err)
	}
	if _, ok := entryClient(t, a.client, "b"); ok {
		t.Error("a still has an entry for b")
	}
	if _, ok := entryClient(t, a.client, "a"); !ok {
		t.Error("a lost its own entry")
	}
	if _, after := meshObjects(t, b.client); !maps.Equal(versionsB, after) {
		t.Error("forget changed b")
	}
	if res, err := Forget(testCtx(t), a.Cluster, []string{"b"}, DisconnectOptions{}); err != nil || len(res.Changes) != 0 {
		t.Errorf("forget again: %+v, %v", res, err)
	}
}

// BenchmarkConnectFirstRead measures on real mesh apiservers, per unicast
// connect of a to b: how long Connect takes (connect-ms); how long after
// it returns the first read of b with the certificate of a's new entry
// gets through (first-read-ms), as for an agent that picks up the entry
// then, and the share of first reads refused (refused-first); and how
// long after Disconnect returns that certificate is refused (revoke-ms).
// "wait" is Connect as it is; "nowait" writes the entries right after the
// grants, as Connect did before it waited for them.
func BenchmarkConnectFirstRead(b *testing.B) {
	for _, bc := range []struct {
		name         string
		grantTimeout time.Duration
	}{{"wait", 0}, {"nowait", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			a, c := twoClusters(b)
			enable(b, a, "a", 1)
			enable(b, c, "b", 2)
			startAPIServers(b, a, c)
			ctx := context.Background()
			var connectTook, firstReadTook, revokeTook time.Duration
			refusedFirst := 0
			key := protocol.ClusterConfigKey("b")
			for b.Loop() {
				start := time.Now()
				if _, err := Connect(ctx, a.Cluster, []*Cluster{c.Cluster}, ConnectOptions{Mode: Unicast, GrantTimeout: bc.grantTimeout}); err != nil {
					b.Fatal(err)
				}
				returned := time.Now()
				connectTook += returned.Sub(start)
				e, ok := entryClient(b, a.client, "b")
				if !ok {
					b.Fatal("no entry")
				}
				cli := meshopstest.Dial(b, e.Endpoints[0], e.CA, e.Cert, e.Key)
				for first := true; ; first = false {
					_, err := cli.Get(ctx, key)
					if err == nil {
						break
					}
					if !errors.Is(err, rpctypes.ErrPermissionDenied) {
						b.Fatal(err)
					}
					if first {
						refusedFirst++
					}
				}
				firstReadTook += time.Since(returned)

				if _, err := Disconnect(ctx, a.Cluster, []*Cluster{c.Cluster}, DisconnectOptions{Mode: Unicast}); err != nil {
					b.Fatal(err)
				}
				disconnected := time.Now()
				for {
					_, err := cli.Get(ctx, key)
					if errors.Is(err, rpctypes.ErrPermissionDenied) {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				revokeTook += time.Since(disconnected)
				cli.Close()
			}
			n := float64(b.N)
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / n }
			b.ReportMetric(ms(connectTook), "connect-ms")
			b.ReportMetric(ms(firstReadTook), "first-read-ms")
			b.ReportMetric(float64(refusedFirst)/n, "refused-first")
			b.ReportMetric(ms(revokeTook), "revoke-ms")
		})
	}
}

// BenchmarkConnectAgain is a connect of two connected clusters: every read
// and check, the endpoint probes, and no write.
func BenchmarkConnectAgain(b *testing.B) {
	a, c := twoClusters(b)
	connected(b, a, c)
	ctx := testCtx(b)
	for b.Loop() {
		res, err := Connect(ctx, a.Cluster, []*Cluster{c.Cluster}, ConnectOptions{})
		if err != nil || len(res.Changes) != 0 {
			b.Fatalf("connect: %v, %v", res.Changes, err)
		}
	}
}

// TestConnectFullMesh connects three clusters in mesh mode, then removes
// one direction with a unicast disconnect.
func TestConnectFullMesh(t *testing.T) {
	a, b := twoClusters(t)
	c := openTestCluster(t, kubeC, "ctx-c", "10.3.0.0/24")
	clusters := map[string]testCluster{"a": a, "b": b, "c": c}
	for i, name := range []string{"a", "b", "c"} {
		enable(t, clusters[name], name, uint32(i+1))
	}
	meshopstest.StartAPIServers(t, meshopstest.APIServerOptions{}, a.RESTConfig(), b.RESTConfig(), c.RESTConfig())
	res, err := Connect(testCtx(t), a.Cluster, []*Cluster{b.Cluster, c.Cluster}, ConnectOptions{Mode: FullMesh})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Connections) != 6 {
		t.Errorf("connections %v, want 6", res.Connections)
	}
	readers := func(tc testCluster) []string {
		cm, err := tc.client.CoreV1().ConfigMaps(meshconfig.Namespace).Get(context.Background(), meshconfig.RemoteReadersConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return slices.Sorted(maps.Keys(cm.Data))
	}
	entryNames := func(tc testCluster) []string {
		entries, _ := meshconfig.ParseEntries(getSecret(t, tc.client, meshconfig.ClusterMeshSecret).Data)
		return slices.Sorted(maps.Keys(entries))
	}
	for name, tc := range clusters {
		var others []string
		for o := range clusters {
			if o != name {
				others = append(others, o)
			}
		}
		slices.Sort(others)
		if got := readers(tc); !slices.Equal(got, others) {
			t.Errorf("%s grants %v, want %v", name, got, others)
		}
		if got := entryNames(tc); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Errorf("%s reads %v, want every cluster", name, got)
		}
	}

	if _, err := Disconnect(testCtx(t), b.Cluster, []*Cluster{c.Cluster}, DisconnectOptions{Mode: Unicast}); err != nil {
		t.Fatal(err)
	}
	if got := entryNames(b); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("b reads %v after b -/-> c", got)
	}
	if got := readers(c); !slices.Equal(got, []string{"a"}) {
		t.Errorf("c grants %v after b -/-> c", got)
	}
	if got := entryNames(c); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("c reads %v; the other direction must stay", got)
	}
}
