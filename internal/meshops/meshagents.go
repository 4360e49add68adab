package meshops

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// meshAgentResource is the cluster-scoped MeshAgent API, one object per
// node agent, status only.
var meshAgentResource = schema.GroupVersionResource{Group: "isthmus.dev", Version: "v1alpha1", Resource: "meshagents"}

// meshAgentStatus is the part of a MeshAgent's status that status reads.
type meshAgentStatus struct {
	NodeName          string       `json:"nodeName"`
	ClusterName       string       `json:"clusterName"`
	LastHeartbeatTime *metav1.Time `json:"lastHeartbeatTime"`
	Clusters          []struct {
		Name       string `json:"name"`
		ClusterID  int32  `json:"clusterID"`
		Local      bool   `json:"local"`
		Connected  bool   `json:"connected"`
		Ready      bool   `json:"ready"`
		Nodes      kind   `json:"nodes"`
		Services   kind   `json:"services"`
		Identities kind   `json:"identities"`
		IPCache    kind   `json:"ipcache"`
		LastError  *struct {
			Message string      `json:"message"`
			Time    metav1.Time `json:"time"`
		} `json:"lastError"`
	} `json:"clusters"`
}

type kind struct {
	Synced  bool  `json:"synced"`
	Entries int64 `json:"entries"`
}

// meshAgentLister reads the MeshAgent objects of a cluster.
type meshAgentLister struct{ c *Cluster }

func (l meshAgentLister) ListAgents(ctx context.Context) ([]AgentReport, error) {
	dc, err := dynamic.NewForConfig(l.c.config)
	if err != nil {
		return nil, err
	}
	list, err := dc.Resource(meshAgentResource).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		// No CRD: no agent can have reported.
		return nil, nil
	}
	if err != nil {
		return nil, l.c.apiError("list", "MeshAgents", err)
	}
	out := make([]AgentReport, 0, len(list.Items))
	for _, item := range list.Items {
		out = append(out, agentReport(item))
	}
	return out, nil
}

func agentReport(u unstructured.Unstructured) AgentReport {
	r := AgentReport{Node: u.GetName()}
	raw, _, _ := unstructured.NestedMap(u.Object, "status")
	var st meshAgentStatus
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &st); err != nil {
		// An unreadable report counts as an agent without one.
		return r
	}
	r.Cluster = st.ClusterName
	if st.LastHeartbeatTime != nil {
		r.Heartbeat = st.LastHeartbeatTime.Time
	}
	for _, c := range st.Clusters {
		ac := AgentClusterReport{
			Name: c.Name, ClusterID: uint32(max(c.ClusterID, 0)), Local: c.Local, Connected: c.Connected, Ready: c.Ready,
			Entries: KindCounts{Nodes: c.Nodes.Entries, Services: c.Services.Entries, Identities: c.Identities.Entries, IPCache: c.IPCache.Entries},
		}
		if c.LastError != nil {
			ac.LastError, ac.LastErrorTime = c.LastError.Message, c.LastError.Time.Time
		}
		r.Clusters = append(r.Clusters, ac)
	}
	return r
}
