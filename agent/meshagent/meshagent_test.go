package meshagent_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent/meshagent"
	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) { testenv.Main(m, kube) }

// view is the agent's view the test changes under the writer.
type view struct {
	mu sync.Mutex
	st v1alpha1.MeshAgentStatus
}

func (v *view) get() v1alpha1.MeshAgentStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	return *v.st.DeepCopy()
}

func (v *view) set(f func(*v1alpha1.MeshAgentStatus)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	f(&v.st)
}

// TestWriterKeepsTheStatus runs the writer against a real kube-apiserver
// with the shipped CRDs: it creates the MeshAgent owned by its Node,
// writes changes promptly and a heartbeat when nothing changes, and
// creates the object again when it is deleted.
func TestWriterKeepsTheStatus(t *testing.T) {
	k := kube.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := meshclient.InstallCRDs(ctx, k.Config); err != nil {
		t.Fatal(err)
	}
	cs, err := meshclient.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	name := "meshagent-" + strings.ToLower(rand.Text()[:8])
	node, err := k.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		k.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
		cs.MeshAgents().Delete(context.Background(), name, metav1.DeleteOptions{})
	})

	v := &view{st: v1alpha1.MeshAgentStatus{NodeName: name, ClusterName: "c1", Clusters: []v1alpha1.MeshAgentCluster{
		{Name: "c1", ClusterID: 1, Local: true, Connected: true, Ready: true},
		{Name: "c2", ClusterID: 2, Connected: true},
	}}}
	w, err := meshagent.New(slog.New(slog.DiscardHandler), meshagent.Config{
		MeshAgents: cs.MeshAgents(), Nodes: k.Client, NodeName: name, Status: v.get,
		Heartbeat: 2 * time.Second, CheckInterval: 50 * time.Millisecond, MinBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { w.Run(rctx); close(done) }()
	defer func() { stop(); <-done }()

	got := waitFor(ctx, t, cs, name, func(a *v1alpha1.MeshAgent) bool { return a.Status.ClustersTotal == 2 })
	if got.Status.ClustersReady != 1 || got.Status.LastHeartbeatTime == nil || got.Status.ClusterName != "c1" {
		t.Errorf("status = %+v", got.Status)
	}
	if len(got.OwnerReferences) != 1 || got.OwnerReferences[0].UID != node.UID || got.OwnerReferences[0].Kind != "Node" {
		t.Errorf("owner references = %+v, want the Node", got.OwnerReferences)
	}

	// A change is written promptly, well before the next heartbeat.
	v.set(func(s *v1alpha1.MeshAgentStatus) { s.Clusters[1].Ready = true })
	got = waitFor(ctx, t, cs, name, func(a *v1alpha1.MeshAgent) bool { return a.Status.ClustersReady == 2 })

	// Nothing changes: the heartbeat still moves.
	first := got.Status.LastHeartbeatTime.Time
	waitFor(ctx, t, cs, name, func(a *v1alpha1.MeshAgent) bool { return a.Status.LastHeartbeatTime.After(first) })

	// Deleted: created again.
	if err := cs.MeshAgents().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	v.set(func(s *v1alpha1.MeshAgentStatus) { s.Clusters = s.Clusters[:1] })
	waitFor(ctx, t, cs, name, func(a *v1alpha1.MeshAgent) bool { return a.Status.ClustersTotal == 1 })
	if at, err := w.LastWrite(); err != nil || at.IsZero() {
		t.Errorf("LastWrite = %v, %v", at, err)
	}
}

func waitFor(ctx context.Context, t *testing.T, cs *meshclient.Clientset, name string, cond func(*v1alpha1.MeshAgent) bool) *v1alpha1.MeshAgent {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last *v1alpha1.MeshAgent
	for {
		a, err := cs.MeshAgents().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			last = a
			if cond(a) {
				return a
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out; last MeshAgent: %+v (%v)", last, err)
		case <-tick.C:
		}
	}
}
