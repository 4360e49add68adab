package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent/internal/agenttest"
	"github.com/isthmus-mesh/isthmus/agent/internal/meshtest"
	"github.com/isthmus-mesh/isthmus/apiserver"
	"github.com/isthmus-mesh/isthmus/certs"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// runAPIServer runs a real isthmus-apiserver for cluster (ID id) against
// the test's kube-apiserver and returns its etcd endpoint and the CA that
// signs its client certificates.
func runAPIServer(t *testing.T, w *world, cluster string, id uint32) (string, *certs.CA) {
	t.Helper()
	dir := t.TempDir()
	ca, err := certs.NewCA(cluster+"-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.IssueServer(certs.ServerOptions{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.IssueClient(protocol.AdminUser(cluster), 0)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"server.crt": srvCert.CertPEM, "server.key": srvCert.KeyPEM, "ca.crt": ca.CertPEM(), "admin.crt": admin.CertPEM, "admin.key": admin.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := apiserver.New(testLogger(), apiserver.Config{
		ClusterName: cluster, ClusterID: id, MaxConnectedClusters: protocol.MaxConnectedClusters255,
		Kube:    w.k.Config,
		DataDir: filepath.Join(dir, "etcd"), ListenAddress: "127.0.0.1:0",
		ServerCertFile: filepath.Join(dir, "server.crt"), ServerKeyFile: filepath.Join(dir, "server.key"),
		ClientCAFile:  filepath.Join(dir, "ca.crt"),
		AdminCertFile: filepath.Join(dir, "admin.crt"), AdminKeyFile: filepath.Join(dir, "admin.key"),
		HeartbeatInterval: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("isthmus-apiserver: %v", err)
		}
	})
	select {
	case <-srv.Started():
	case err := <-done:
		t.Fatalf("isthmus-apiserver stopped: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("isthmus-apiserver did not start")
	}
	return srv.EtcdEndpoint(), ca
}

// TestAgentAgainstIsthmusAPIServer runs the agent against a real
// isthmus-apiserver exporting the test's kube-apiserver: the agent reads
// its own cluster as local-<c>, and the pinned maps hold what Kubernetes
// says: pod IPs with the identities the apiserver allocated, node
// addresses, and the global Service with its ready backend.
func TestAgentAgainstIsthmusAPIServer(t *testing.T) {
	privileged.Require(t)
	w := &world{tb: t, k: kube.Kube(t), secret: map[string][]byte{}, pinRoot: agenttest.PinRoot(t), node: "", remotes: map[string]*meshtest.Cluster{}}
	ctx := context.Background()
	ns := w.k.Namespace
	cs := w.k.Client
	w.node = ns + "-n1"
	nodeIP := netip.MustParseAddr("172.30.0.1")
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: w.node}, Spec: corev1.NodeSpec{PodCIDR: "10.40.0.0/24", PodCIDRs: []string{"10.40.0.0/24"}}}
	node, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), w.node, metav1.DeleteOptions{}) })
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP.String()}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	podIP := netip.MustParseAddr("10.40.0.5")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-1", Namespace: ns, Labels: map[string]string{"app": "echo"}},
		Spec:       corev1.PodSpec{NodeName: w.node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/echo"}}},
	}
	pod, err = cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, HostIP: nodeIP.String(), PodIP: podIP.String(), PodIPs: []corev1.PodIP{{IP: podIP.String()}}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := w.globalService("echo", nil)
	ready := true
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{podIP.String()}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &w.node}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	const cluster, id = "home", 5
	endpoint, ca := runAPIServer(t, w, cluster, id)
	local, err := ca.IssueClient(protocol.LocalUser(cluster), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := meshconfig.PutEntry(w.secret, meshconfig.ClusterEntry{Cluster: cluster, Endpoints: []string{endpoint}, CA: ca.CertPEM(), Cert: local.CertPEM, Key: local.KeyPEM}); err != nil {
		t.Fatal(err)
	}
	w.writeSecret()

	cfg := w.agentConfig()
	cfg.ClusterName, cfg.ClusterID = cluster, id
	api := w.runAgent(cfg)
	waitSynced(t, api)
	m := openMaps(t, w.mapsConfig())
	fe := dpmaps.Frontend{Addr: netip.MustParseAddr(svc.Spec.ClusterIP), Port: 80, Protocol: dpmaps.ProtoTCP}
	meshtest.Eventually(t, waitTimeout, func() error {
		e, ok, err := m.IPCache.Lookup(podIP)
		if err != nil || !ok {
			return fmt.Errorf("pod %s not in the ipcache (%v)", podIP, err)
		}
		if e.Identity.ClusterID(255) != id || e.Identity.LocalPart(255) < protocol.MinLocalIdentity || e.TunnelEndpoint != nodeIP || e.Flags&dpmaps.IPCacheFlagLocalNode == 0 {
			return fmt.Errorf("pod entry %+v", e)
		}
		if n, ok, _ := m.IPCache.Lookup(nodeIP); !ok || n.Identity != protocol.IdentityHost {
			return fmt.Errorf("own node address: %+v", n)
		}
		got, _, err := serviceBackends(m, fe)
		if err != nil {
			return err
		}
		if want := fmt.Sprintf("%s:8080@%d/true", podIP, id); len(got) != 1 || got[0] != want {
			return fmt.Errorf("echo backends %v, want [%s]", got, want)
		}
		return nil
	})
	// The apiserver's heartbeat (every second here) reaches the status.
	meshtest.Eventually(t, waitTimeout, func() error {
		st, err := status(api)
		if err != nil {
			return err
		}
		if c := clusterOf(st, cluster); c == nil || c.State != "ready" || c.LastHeartbeat == nil {
			return fmt.Errorf("own cluster status: %v", c)
		}
		return nil
	})

	// The pod goes: the apiserver withdraws it and so does the agent.
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "echo-1", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, waitTimeout, func() error {
		if _, ok, _ := m.IPCache.Lookup(podIP); ok {
			return fmt.Errorf("deleted pod %s still in the ipcache", podIP)
		}
		return nil
	})
}
