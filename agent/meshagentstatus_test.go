package agent

import (
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/agent/clustermesh"
	"github.com/isthmus-mesh/isthmus/agent/remotecluster"
	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// TestMeshAgentStatus checks the MeshAgent status an agent reports from
// its readers and merged state: the own cluster flagged, readiness and
// per-kind sync and counts, the last error, and LastChangeTime moving
// only when Connected or Ready change.
func TestMeshAgentStatus(t *testing.T) {
	st, err := state.New(state.Config{LocalCluster: "c1", LocalClusterID: 1, MaxConnectedClusters: 255, NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	st.Cluster("c2").UpsertNode(&protocol.Node{Name: "m1", Cluster: "c2", ClusterID: 2})
	synced := map[protocol.Kind]remotecluster.KindStatus{}
	for _, k := range protocol.Kinds {
		synced[k] = remotecluster.KindStatus{Synced: true}
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ms := clustermesh.Status{SecretSeen: true, Clusters: []remotecluster.Status{
		{Cluster: "c1", ClusterID: 1, State: remotecluster.StateReady, Kinds: synced},
		{Cluster: "c2", ClusterID: 2, State: remotecluster.StateSyncing, Kinds: map[protocol.Kind]remotecluster.KindStatus{protocol.KindNodes: {Synced: true}},
			LastError: "dial tcp: refused", LastErrorTime: t0},
	}}
	var links linkTracker
	got := meshAgentStatus("n1", "c1", ms, st.Summary, &links, t0)
	if got.NodeName != "n1" || got.ClusterName != "c1" || got.ClustersTotal != 2 || got.ClustersReady != 1 {
		t.Fatalf("status = %+v", got)
	}
	c1, c2 := got.Clusters[0], got.Clusters[1]
	if !c1.Local || !c1.Ready || !c1.Connected || c1.ClusterID != 1 || !c1.IPCache.Synced {
		t.Errorf("own cluster = %+v", c1)
	}
	if c2.Local || c2.Ready || !c2.Connected || !c2.Nodes.Synced || c2.Nodes.Entries != 1 || c2.Services.Synced {
		t.Errorf("c2 = %+v", c2)
	}
	if c2.LastError == nil || c2.LastError.Message != "dial tcp: refused" || !c2.LastError.Time.Time.Equal(t0) {
		t.Errorf("c2 last error = %+v", c2.LastError)
	}

	// Later, nothing changed for c1; c2 became ready.
	t1 := t0.Add(time.Minute)
	ms.Clusters[1].State, ms.Clusters[1].Kinds = remotecluster.StateReady, synced
	got = meshAgentStatus("n1", "c1", ms, st.Summary, &links, t1)
	if !got.Clusters[0].LastChangeTime.Time.Equal(t0) {
		t.Errorf("c1 last change = %v, want %v (unchanged)", got.Clusters[0].LastChangeTime, t0)
	}
	if !got.Clusters[1].LastChangeTime.Time.Equal(t1) || got.ClustersReady != 2 {
		t.Errorf("c2 last change = %v, want %v; ready %d", got.Clusters[1].LastChangeTime, t1, got.ClustersReady)
	}
}
