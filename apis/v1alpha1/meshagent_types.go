package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MeshAgent is one node agent's view of the mesh: which clusters it reads
// and how far it got with each. Each agent writes its own, named after its
// node; `isthmus status` reads them all through the Kubernetes API. It has
// no spec: everything is status, written through the status subresource.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ma,categories=isthmus
// +kubebuilder:printcolumn:name="Cluster",type=string,JSONPath=`.status.clusterName`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.clustersReady`,description="clusters ready"
// +kubebuilder:printcolumn:name="Clusters",type=integer,JSONPath=`.status.clustersTotal`,description="clusters in the mesh, this one included"
// +kubebuilder:printcolumn:name="Heartbeat",type=date,JSONPath=`.status.lastHeartbeatTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshAgent struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Status MeshAgentStatus `json:"status,omitempty"`
}

// MeshAgentStatus is what one agent knows about the mesh.
type MeshAgentStatus struct {
	// NodeName is the node the agent runs on (also the object's name).
	// +optional
	NodeName string `json:"nodeName,omitempty"`

	// ClusterName is the agent's own cluster.
	// +optional
	ClusterName string `json:"clusterName,omitempty"`

	// LastHeartbeatTime is when the agent last wrote this status; an old
	// one means the agent is gone or stuck.
	// +optional
	LastHeartbeatTime *metav1.Time `json:"lastHeartbeatTime,omitempty"`

	// Clusters has one entry per cluster in the mesh, the agent's own
	// included (Local).
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=512
	Clusters []MeshAgentCluster `json:"clusters,omitempty"`

	// ClustersReady counts the Clusters that are Ready; see CountClusters.
	// +optional
	ClustersReady int32 `json:"clustersReady"`
	// ClustersTotal is the length of Clusters.
	// +optional
	ClustersTotal int32 `json:"clustersTotal"`
}

// MeshAgentCluster is an agent's connection to one cluster's mesh state.
type MeshAgentCluster struct {
	// Name is the cluster's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=32
	Name string `json:"name"`

	// ClusterID is the cluster's ID, 0 until its cluster config was read.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=511
	ClusterID int32 `json:"clusterID,omitempty"`

	// Local marks the agent's own cluster.
	// +optional
	Local bool `json:"local,omitempty"`

	// Connected: the agent holds a working connection to the cluster's
	// mesh etcd.
	Connected bool `json:"connected"`

	// Ready: connected, the cluster config checked, and every kind below
	// synced; the cluster's state is complete in the agent.
	Ready bool `json:"ready"`

	// Per kind of mesh state: whether the initial listing is complete and
	// how many entries the agent holds.
	Nodes      KindSync `json:"nodes"`
	Services   KindSync `json:"services"`
	Identities KindSync `json:"identities"`
	IPCache    KindSync `json:"ipcache"`

	// LastError is the latest error reading this cluster, kept after it
	// recovers so that flapping shows.
	// +optional
	LastError *ClusterError `json:"lastError,omitempty"`

	// LastChangeTime is when Connected or Ready last changed.
	// +optional
	LastChangeTime *metav1.Time `json:"lastChangeTime,omitempty"`
}

// KindSync is the state of one kind of mesh state read from a cluster.
type KindSync struct {
	// Synced: the initial listing is complete (the cluster's synced canary
	// for this kind was seen).
	Synced bool `json:"synced"`
	// Entries is how many entries of this kind the agent holds.
	// +kubebuilder:validation:Minimum=0
	Entries int64 `json:"entries"`
}

// ClusterError is an error with the time it happened.
type ClusterError struct {
	// +required
	Message string `json:"message"`
	// +required
	Time metav1.Time `json:"time"`
}

// CountClusters sets ClustersReady and ClustersTotal from Clusters, for the
// printer columns. Call it before writing the status.
func (s *MeshAgentStatus) CountClusters() {
	s.ClustersTotal = int32(len(s.Clusters))
	s.ClustersReady = 0
	for _, c := range s.Clusters {
		if c.Ready {
			s.ClustersReady++
		}
	}
}

// MeshAgentList is a list of MeshAgent.
//
// +kubebuilder:object:root=true
type MeshAgentList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshAgent `json:"items"`
}
