package apiserver_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/apiserver"
	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd"
	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd/meshetcdtest"
	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// clientAs connects to m's etcd with a certificate of m's CA for user.
func (m *meshServer) clientAs(t testing.TB, user string) *clientv3.Client {
	t.Helper()
	kp, err := m.ca.IssueClient(user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := meshetcd.NewClient(ctxT(t), meshetcd.ClientConfig{
		Endpoints: []string{m.srv.EtcdEndpoint()},
		TLS:       tlsConfig(c, m.ca),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestConfigMapPublishing(t *testing.T) {
	k := kube.Kube(t)
	ctx := ctxT(t)
	t.Cleanup(func() { deleteMeshConfigMap(t, k.Client) })
	cms := k.Client.CoreV1().ConfigMaps(meshconfig.Namespace)
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// Written by `isthmus enable` before: the name matches, other keys stay.
	if _, err := cms.Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: meshconfig.ConfigMapName, Namespace: meshconfig.Namespace},
		Data:       map[string]string{meshconfig.KeyClusterName: "cluster3", "other": "kept"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m := newMeshServer(t, k.Config, serverOptions{configure: func(c *apiserver.Config) {
		c.AdvertiseEndpoints = []string{"https://10.0.0.1:2379", "https://mesh.c3.example:2379"}
	}})
	m.start()
	cm, err := cms.Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		meshconfig.KeyClusterName:          "cluster3",
		meshconfig.KeyClusterID:            "3",
		meshconfig.KeyMaxConnectedClusters: "255",
		meshconfig.KeyMeshEndpoints:        "https://10.0.0.1:2379,https://mesh.c3.example:2379",
		"other":                            "kept",
	}
	for k, v := range want {
		if cm.Data[k] != v {
			t.Errorf("ConfigMap %s = %q, want %q", k, cm.Data[k], v)
		}
	}
	m.shutdown()

	// Another cluster ID for the same cluster: refused, naming both.
	other := newMeshServer(t, k.Config, serverOptions{cluster: "cluster3", clusterID: 4})
	err = other.startErr()
	if err == nil || !strings.Contains(err.Error(), `cluster-id "3"`) || !strings.Contains(err.Error(), "--cluster-id") {
		t.Fatalf("start with another cluster ID: %v", err)
	}
}

// The users of PROTOCOL.md "Access" on the apiserver's own etcd: local
// agents read the export, remote clusters (shared or per-cluster user, the
// latter following the isthmus-remote-readers ConfigMap) too, and nobody
// but admin reads the identity allocator's record.
func TestServerAccess(t *testing.T) {
	k := kube.Kube(t)
	ctx := ctxT(t)
	t.Cleanup(func() { deleteMeshConfigMap(t, k.Client) })
	cms := k.Client.CoreV1().ConfigMaps(meshconfig.Namespace)
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	readers := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: meshconfig.RemoteReadersConfigMap, Namespace: meshconfig.Namespace},
		Data:       map[string]string{"c7": "", "Not_A_Name": ""},
	}
	if _, err := cms.Create(ctx, readers, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cms.Delete(context.Background(), meshconfig.RemoteReadersConfigMap, metav1.DeleteOptions{}) })

	m := newMeshServer(t, k.Config, serverOptions{})
	m.start()
	denied := func(err error) bool { return errors.Is(err, rpctypes.ErrPermissionDenied) }
	for _, user := range []string{"local-cluster3", "remote", "remote-c7"} {
		cli := m.clientAs(t, user)
		if _, err := cli.Get(ctx, protocol.StatePrefix, clientv3.WithPrefix()); err != nil {
			t.Errorf("%s lists cilium/state/: %v", user, err)
		}
		if _, err := cli.Get(ctx, protocol.SyncedKey("cluster3", protocol.KindNodes)); err != nil {
			t.Errorf("%s reads the synced canary: %v", user, err)
		}
		if _, err := cli.Get(ctx, "isthmus/", clientv3.WithPrefix()); !denied(err) {
			t.Errorf("%s lists the private identity record: %v", user, err)
		}
		if _, err := cli.Put(ctx, protocol.NodeKey("cluster3", "evil"), "x"); !denied(err) {
			t.Errorf("%s writes: %v", user, err)
		}
	}

	// connect's undo: the cluster leaves the ConfigMap, its user goes.
	cm, err := cms.Get(ctx, meshconfig.RemoteReadersConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(cm.Data, "c7")
	cm.Data["c8"] = ""
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "remote-c7 removed, remote-c8 added", func() error {
		users, err := m.reader.UserList(ctx)
		if err != nil {
			return err
		}
		got := strings.Join(users.Users, ",")
		if strings.Contains(got, "remote-c7") || !strings.Contains(got, "remote-c8") {
			return errors.New("users " + got)
		}
		return nil
	})
	if _, err := m.clientAs(t, "remote-c7").Get(ctx, protocol.StatePrefix, clientv3.WithPrefix()); err == nil {
		t.Error("remote-c7 still reads after its removal")
	}
}

func TestHealthEndpoints(t *testing.T) {
	k := kube.Kube(t)
	t.Cleanup(func() { deleteMeshConfigMap(t, k.Client) })
	m := newMeshServer(t, k.Config, serverOptions{})
	m.start()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + m.srv.HealthAddress() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
	_, metrics := get("/metrics")
	for _, name := range []string{
		"isthmus_apiserver_export_lag_seconds_bucket",
		"isthmus_apiserver_etcd_txn_duration_seconds_bucket",
		"isthmus_apiserver_etcd_writes_total",
		"isthmus_apiserver_etcd_write_errors_total 0",
		`isthmus_apiserver_keys{prefix="nodes"}`,
		"isthmus_apiserver_ready 1",
		"isthmus_apiserver_initial_export_seconds",
		"isthmus_apiserver_heartbeat_timestamp_seconds",
		"go_goroutines",
	} {
		if !strings.Contains(metrics, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// External etcd: the apiserver sets up the same users and roles when its
// certificate has the root role, and says what to do when it has not.
func TestExternalEtcd(t *testing.T) {
	k := kube.Kube(t)
	t.Cleanup(func() { deleteMeshConfigMap(t, k.Client) })
	ext := meshetcdtest.Start(t, "cluster3")
	m := newMeshServer(t, k.Config, serverOptions{configure: func(c *apiserver.Config) {
		c.EtcdEndpoints = ext.Endpoints()
		c.EtcdCAFile, c.EtcdCertFile, c.EtcdKeyFile = ext.CAFile, ext.AdminCertFile, ext.AdminKeyFile
		c.EtcdManageAuth = true
	}})
	m.ca = ext.CA
	m.cfg.AdminCertFile, m.cfg.AdminKeyFile, m.cfg.ClientCAFile = ext.AdminCertFile, ext.AdminKeyFile, ext.CAFile
	m.start()
	ctx := ctxT(t)
	resp, err := ext.Admin.Get(ctx, protocol.ClusterConfigKey("cluster3"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("cluster config in the external etcd: %v %v", resp, err)
	}
	if _, err := ext.Client(t, "remote").Get(ctx, protocol.StatePrefix, clientv3.WithPrefix()); err != nil {
		t.Errorf("remote reads the external etcd: %v", err)
	}
	m.shutdown()

	local, err := ext.CA.IssueClient("local-cluster3", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := writePair(t, dir, local)
	weak := newMeshServer(t, k.Config, serverOptions{configure: func(c *apiserver.Config) {
		c.EtcdEndpoints = ext.Endpoints()
		c.EtcdCAFile, c.EtcdCertFile, c.EtcdKeyFile = ext.CAFile, certFile, keyFile
		c.EtcdManageAuth = true
	}})
	err = weak.startErr()
	if !errors.Is(err, meshetcd.ErrNotRoot) || !strings.Contains(err.Error(), "--etcd-manage-auth=false") {
		t.Fatalf("external etcd with a read-only certificate: %v", err)
	}
}

var _ = certs.NewCA
