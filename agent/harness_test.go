package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent"
	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/agent/internal/agenttest"
	"github.com/isthmus-mesh/isthmus/agent/internal/meshtest"
	"github.com/isthmus-mesh/isthmus/agent/remotecluster"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) {
	agenttest.RunAgentIfReexec()
	testenv.Main(m, kube)
}

const waitTimeout = 90 * time.Second

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// world is a local cluster ("home", ID 1) with a real kube-apiserver and
// mesh etcd, remote clusters with their mesh etcds, and the clustermesh
// Secret listing them, in the test's namespace.
type world struct {
	tb       testing.TB
	k        *testenv.Kube
	home     *meshtest.Cluster
	remotes  map[string]*meshtest.Cluster
	secret   map[string][]byte
	pinRoot  string
	node     string
	nodeIP   netip.Addr
	registry *prometheus.Registry
}

func newWorld(t testing.TB, remotes map[string]uint32) *world {
	t.Helper()
	w := &world{
		tb:       t,
		k:        kube.Kube(t),
		home:     meshtest.StartCluster(t, "home", 1),
		remotes:  map[string]*meshtest.Cluster{},
		secret:   map[string][]byte{},
		pinRoot:  agenttest.PinRoot(t),
		node:     "home-node-0",
		registry: prometheus.NewRegistry(),
	}
	w.nodeIP = w.home.HostIP(0)
	w.home.Heartbeat(200 * time.Millisecond)
	w.putEntry(w.home, protocol.LocalUser("home"))
	for name, id := range remotes {
		c := meshtest.StartCluster(t, name, id)
		c.Heartbeat(200 * time.Millisecond)
		w.remotes[name] = c
		w.putEntry(c, protocol.RemoteUser)
	}
	w.writeSecret()
	return w
}

func (w *world) putEntry(c *meshtest.Cluster, user string) {
	if err := meshconfig.PutEntry(w.secret, c.Entry(user)); err != nil {
		w.tb.Fatal(err)
	}
}

// writeSecret creates or replaces the clustermesh Secret.
func (w *world) writeSecret() {
	w.tb.Helper()
	ctx := context.Background()
	secrets := w.k.Client.CoreV1().Secrets(w.k.Namespace)
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.ClusterMeshSecret, Namespace: w.k.Namespace}, Data: w.secret}
	_, err := secrets.Update(ctx, s, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
	}
	if err != nil {
		w.tb.Fatalf("write clustermesh Secret: %v", err)
	}
}

// mapsConfig keeps the test maps small: several test binaries share the
// machine.
func (w *world) mapsConfig() dpmaps.Config {
	return dpmaps.Config{
		Root: w.pinRoot, IPCacheMaxEntries: 16384, FrontendMaxEntries: 256, SlotMaxEntries: 2048, BackendMaxEntries: 1024,
		RevNATMaxEntries: 256, PolicyMaxEntries: 256, EnforcementMaxEntries: 256, CTMaxEntries: 256, FlowRingBytes: 16 * 1024,
	}
}

func (w *world) agentConfig() agent.Config {
	dir := w.tb.TempDir()
	return agent.Config{
		NodeName:             w.node,
		ClusterName:          "home",
		ClusterID:            1,
		MaxConnectedClusters: protocol.MaxConnectedClusters255,
		Client:               w.k.Client,
		Maps:                 w.mapsConfig(),
		StateDir:             filepath.Join(dir, "state"),
		APISocket:            filepath.Join(dir, "agent.sock"),
		MetricsAddress:       "127.0.0.1:0",
		InitialSyncTimeout:   time.Minute,
		Reader: remotecluster.Config{
			HeartbeatTimeout: 5 * time.Second,
			MinBackoff:       50 * time.Millisecond,
			MaxBackoff:       time.Second,
			DialTimeout:      3 * time.Second,
		},
		Registry:             w.registry,
		ClusterMeshNamespace: w.k.Namespace,
		ServiceNamespace:     w.k.Namespace,
	}
}

// runAgent runs an agent in this process until the test ends.
func (w *world) runAgent(cfg agent.Config) agentv1.AgentClient {
	w.tb.Helper()
	a, err := agent.New(testLogger(), cfg)
	if err != nil {
		w.tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	w.tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			w.tb.Errorf("agent: %v", err)
		}
	})
	return dialAgent(w.tb, cfg.APISocket)
}

func dialAgent(t testing.TB, socket string) agentv1.AgentClient {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewAgentClient(conn)
}

func status(api agentv1.AgentClient) (*agentv1.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return api.Status(ctx, &agentv1.StatusRequest{})
}

// waitSynced waits until the agent pruned after its initial sync.
func waitSynced(t *testing.T, api agentv1.AgentClient) {
	t.Helper()
	meshtest.Eventually(t, waitTimeout, func() error {
		st, err := status(api)
		if err != nil {
			return err
		}
		if !st.InitialSyncDone {
			return fmt.Errorf("initial sync not done: %v", st.Clusters)
		}
		return nil
	})
}

func clusterOf(st *agentv1.StatusResponse, name string) *agentv1.ClusterStatus {
	for _, c := range st.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// openMaps opens the pinned maps from the test process, as the datapath
// would see them; it never recreates a pin.
func openMaps(t testing.TB, cfg dpmaps.Config) *dpmaps.Maps {
	t.Helper()
	cfg.RefuseIncompatible = true
	m, err := dpmaps.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// globalService creates a global Service named name with port http 80.
func (w *world) globalService(name string, annotations map[string]string) *corev1.Service {
	w.tb.Helper()
	a := map[string]string{meshconfig.ServiceGlobalAnnotation: "true"}
	for k, v := range annotations {
		a[k] = v
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.k.Namespace, Annotations: a},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	out, err := w.k.Client.CoreV1().Services(w.k.Namespace).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		w.tb.Fatalf("create Service %s: %v", name, err)
	}
	return out
}
