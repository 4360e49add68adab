package agent

import (
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent/clustermesh"
	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// linkTracker remembers when each cluster's Connected or Ready last
// changed, for MeshAgentCluster.LastChangeTime. Safe for concurrent use.
type linkTracker struct {
	mu   sync.Mutex // guards last
	last map[string]linkState
}

type linkState struct {
	connected, ready bool
	since            time.Time
}

// observe records the cluster's state and returns when it last changed;
// the first observation counts as a change.
func (t *linkTracker) observe(cluster string, connected, ready bool, now time.Time) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		t.last = map[string]linkState{}
	}
	prev, ok := t.last[cluster]
	if ok && prev.connected == connected && prev.ready == ready {
		return prev.since
	}
	t.last[cluster] = linkState{connected: connected, ready: ready, since: now}
	return now
}

// forget drops the clusters not in keep.
func (t *linkTracker) forget(keep map[string]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for name := range t.last {
		if !keep[name] {
			delete(t.last, name)
		}
	}
}

// meshAgentStatus is the node's MeshAgent status (without the heartbeat
// time, which the writer sets): one entry per cluster the agent reads,
// from the same reader status the local API reports.
func meshAgentStatus(node, self string, ms clustermesh.Status, summary func(string) (state.ClusterSummary, bool), links *linkTracker, now time.Time) v1alpha1.MeshAgentStatus {
	st := v1alpha1.MeshAgentStatus{NodeName: node, ClusterName: self}
	seen := map[string]bool{}
	for _, c := range ms.Clusters {
		seen[c.Cluster] = true
		sum, _ := summary(c.Cluster)
		kind := func(k protocol.Kind) v1alpha1.KindSync {
			return v1alpha1.KindSync{Synced: c.Kinds[k].Synced, Entries: int64(sum.Entries(k))}
		}
		mc := v1alpha1.MeshAgentCluster{
			Name:       c.Cluster,
			ClusterID:  int32(c.ClusterID),
			Local:      c.Cluster == self,
			Connected:  c.Connected(),
			Ready:      c.Ready(),
			Nodes:      kind(protocol.KindNodes),
			Services:   kind(protocol.KindServices),
			Identities: kind(protocol.KindIdentities),
			IPCache:    kind(protocol.KindIPCache),
		}
		if c.LastError != "" {
			mc.LastError = &v1alpha1.ClusterError{Message: c.LastError, Time: metav1.NewTime(c.LastErrorTime.Truncate(time.Second))}
		}
		changed := metav1.NewTime(links.observe(c.Cluster, mc.Connected, mc.Ready, now).Truncate(time.Second))
		mc.LastChangeTime = &changed
		st.Clusters = append(st.Clusters, mc)
	}
	links.forget(seen)
	st.CountClusters()
	return st
}

// meshAgentStatusNow is meshAgentStatus of the running agent.
func (a *Agent) meshAgentStatusNow() v1alpha1.MeshAgentStatus {
	return meshAgentStatus(a.cfg.NodeName, a.cfg.ClusterName, a.mesh.Status(), a.state.Summary, &a.links, time.Now())
}
