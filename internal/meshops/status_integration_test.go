package meshops

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

// putAgent creates or updates the MeshAgent of node with status st, as
// the node's agent does.
func putAgent(t *testing.T, c testCluster, st v1alpha1.MeshAgentStatus) {
	t.Helper()
	mc, err := meshclient.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	agents := mc.MeshAgents()
	ctx := context.Background()
	a, err := agents.Get(ctx, st.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if a, err = agents.Create(ctx, &v1alpha1.MeshAgent{ObjectMeta: metav1.ObjectMeta{Name: st.NodeName}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = agents.Delete(context.Background(), st.NodeName, metav1.DeleteOptions{}) })
	} else if err != nil {
		t.Fatal(err)
	}
	st.CountClusters()
	a.Status = st
	if _, err := agents.UpdateStatus(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func agentCluster(name string, id int32, ready bool, lastError string) v1alpha1.MeshAgentCluster {
	kind := v1alpha1.KindSync{Synced: ready, Entries: 3}
	c := v1alpha1.MeshAgentCluster{Name: name, ClusterID: id, Local: name == "a", Connected: ready, Ready: ready,
		Nodes: kind, Services: kind, Identities: kind, IPCache: kind}
	if lastError != "" {
		c.LastError = &v1alpha1.ClusterError{Message: lastError, Time: metav1.Now()}
	}
	return c
}

func agentStatus(node string, heartbeat time.Time, clusters ...v1alpha1.MeshAgentCluster) v1alpha1.MeshAgentStatus {
	hb := metav1.NewTime(heartbeat)
	return v1alpha1.MeshAgentStatus{NodeName: node, ClusterName: "a", LastHeartbeatTime: &hb, Clusters: clusters}
}

// TestStatusFromMeshAgents reads real MeshAgent objects: enable installs
// their CRD, the test writes them as agents do.
func TestStatusFromMeshAgents(t *testing.T) {
	a, b := twoClusters(t)
	connected(t, a, b)
	const unknownCA = "tls: failed to verify certificate: x509: certificate signed by unknown authority"
	now := time.Now()
	putAgent(t, a, agentStatus("node-1", now, agentCluster("a", 1, true, ""), agentCluster("b", 2, true, "")))
	putAgent(t, a, agentStatus("node-2", now, agentCluster("a", 1, true, ""), agentCluster("b", 0, false, unknownCA)))

	r, err := Status(testCtx(t), a.Cluster, StatusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Ready || r.AgentsReporting != 2 || len(r.Clusters) != 2 || r.Clusters[0].Synced != 2 {
		t.Fatalf("report %+v", r)
	}
	cb := r.Clusters[1]
	if cb.Name != "b" || cb.Synced != 1 || cb.Connected != 1 || cb.ClusterID != 2 || cb.Entries.Services != 3 || len(cb.Problems) != 1 ||
		cb.Problems[0].Message != unknownCA || cb.Problems[0].Nodes[0] != "node-2" || !strings.Contains(cb.Problems[0].Hint, "re-run `isthmus connect --context ctx-a") {
		t.Errorf("cluster b: %+v", cb)
	}

	// Wait: once node-2 recovers, the cluster is ready. The agent is
	// updated from the first poll's progress report, so the wait must
	// poll again to see it.
	polls := 0
	r, err = WaitReady(testCtx(t), a.Cluster, WaitOptions{Timeout: time.Minute, Interval: 50 * time.Millisecond, Progress: func(r *StatusReport, err error) {
		if err != nil {
			t.Errorf("poll: %v", err)
			return
		}
		polls++
		if polls == 1 {
			if r.Ready {
				t.Error("ready before node-2 recovered")
			}
			putAgent(t, a, agentStatus("node-2", time.Now(), agentCluster("a", 1, true, ""), agentCluster("b", 2, true, unknownCA)))
		}
	}})
	if err != nil || !r.Ready || polls < 2 {
		t.Fatalf("wait: %v after %d polls; %+v", err, polls, r)
	}

	// An agent gone silent keeps the cluster from ready; the wait gives up
	// with the reasons.
	putAgent(t, a, agentStatus("node-3", time.Now().Add(-time.Hour)))
	r, err = WaitReady(testCtx(t), a.Cluster, WaitOptions{Timeout: 300 * time.Millisecond, Interval: 50 * time.Millisecond})
	var nre *NotReadyError
	if !errors.As(err, &nre) || !strings.Contains(err.Error(), "1 agent(s) have not reported for more than 3m0s") || r == nil || r.StaleAgents[0] != "node-3" {
		t.Fatalf("wait with a stale agent: %v", err)
	}
}
