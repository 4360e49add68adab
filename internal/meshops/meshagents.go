package meshops

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

// meshAgentLister reads the MeshAgent objects of a cluster: one per node
// agent, cluster-scoped, status only.
type meshAgentLister struct{ c *Cluster }

func (l meshAgentLister) ListAgents(ctx context.Context) ([]AgentReport, error) {
	list, err := l.c.mesh.MeshAgents().List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		// No CRD: no agent can have reported.
		return nil, nil
	}
	if err != nil {
		return nil, l.c.apiError("list", "MeshAgents", err)
	}
	out := make([]AgentReport, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, AgentReportOf(&list.Items[i]))
	}
	return out, nil
}

// AgentReportOf is the report a MeshAgent object carries.
func AgentReportOf(a *v1alpha1.MeshAgent) AgentReport {
	st := a.Status
	r := AgentReport{Node: a.Name, Cluster: st.ClusterName}
	if st.LastHeartbeatTime != nil {
		r.Heartbeat = st.LastHeartbeatTime.Time
	}
	for _, c := range st.Clusters {
		ac := AgentClusterReport{
			Name:      c.Name,
			ClusterID: uint32(max(c.ClusterID, 0)),
			Local:     c.Local,
			Connected: c.Connected,
			Ready:     c.Ready,
			Entries: KindCounts{
				Nodes:      c.Nodes.Entries,
				Services:   c.Services.Entries,
				Identities: c.Identities.Entries,
				IPCache:    c.IPCache.Entries,
			},
		}
		if c.LastError != nil {
			ac.LastError, ac.LastErrorTime = c.LastError.Message, c.LastError.Time.Time
		}
		r.Clusters = append(r.Clusters, ac)
	}
	return r
}
