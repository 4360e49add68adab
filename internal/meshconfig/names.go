package meshconfig

// Namespace holds every mesh object in a cluster.
const Namespace = "isthmus-system"

// ConfigMap "isthmus-config" describes this cluster's place in the mesh. The
// CLI's enable writes the cluster identity; the mesh apiserver (or the Helm
// chart) adds the endpoints remote clusters dial.
const (
	ConfigMapName = "isthmus-config"

	KeyClusterName          = "cluster-name"
	KeyClusterID            = "cluster-id"
	KeyMaxConnectedClusters = "max-connected-clusters"
	// KeyMeshEndpoints is a comma-separated list of https URLs of the mesh
	// etcd, reachable from other clusters.
	KeyMeshEndpoints = "mesh-endpoints"
)

// Secrets with certificates. Each holds "tls.crt" and "tls.key" and, except
// for the CA itself, "ca.crt".
const (
	// CASecret holds the mesh CA of this cluster: it signs the server
	// certificate and every client certificate that may read this cluster.
	CASecret = "isthmus-ca"
	// ServerCertSecret is the mesh apiserver's etcd server certificate.
	ServerCertSecret = "isthmus-apiserver-server-cert"
	// AdminCertSecret is the client certificate of etcd user admin-<c>.
	AdminCertSecret = "isthmus-apiserver-admin-cert"
	// LocalCertSecret is the client certificate of etcd user local-<c>,
	// which local agents use to read their own cluster's export.
	LocalCertSecret = "isthmus-local-cert"

	KeyTLSCert = "tls.crt"
	KeyTLSKey  = "tls.key"
	KeyCACert  = "ca.crt"
)

// ClusterMeshSecret lists the clusters an agent reads, its own included
// (PROTOCOL.md, "The connection config").
const ClusterMeshSecret = "isthmus-clustermesh"

// ClusterMeshMountDir is where the clustermesh Secret is mounted in agent
// pods; file paths in its entries point there. Agents that read the Secret
// through the Kubernetes API resolve them by base name instead.
const ClusterMeshMountDir = "/var/lib/isthmus/clustermesh"

// Annotations and labels.
const (
	// NodeWireGuardPubKeyAnnotation carries a node's WireGuard public key,
	// set by its agent and exported by the mesh apiserver.
	NodeWireGuardPubKeyAnnotation = "network.isthmus.dev/wg-pub-key"

	ServiceGlobalAnnotation   = "service.isthmus.dev/global"
	ServiceSharedAnnotation   = "service.isthmus.dev/shared"
	ServiceAffinityAnnotation = "service.isthmus.dev/affinity"

	// The Cilium spellings are honoured too, so services annotated for
	// Cilium ClusterMesh carry over. The isthmus.dev spelling wins when both
	// are set.
	CiliumServiceGlobalAnnotation   = "service.cilium.io/global"
	CiliumServiceSharedAnnotation   = "service.cilium.io/shared"
	CiliumServiceAffinityAnnotation = "service.cilium.io/affinity"
)

// Service affinity values.
const (
	AffinityNone   = "none"
	AffinityLocal  = "local"
	AffinityRemote = "remote"
)

// RemoteReadersConfigMap lists, one data key per cluster name, the remote
// clusters allowed to read this cluster's mesh etcd. `isthmus connect` adds a
// cluster when it issues it a certificate (CN remote-<cluster>, see
// protocol.RemoteUserFor) and `isthmus disconnect` removes it; the mesh
// apiserver keeps the etcd users in step, so a disconnect revokes access even
// while the certificate is still valid.
const RemoteReadersConfigMap = "isthmus-remote-readers"

// APIServerService is the Service in front of the mesh apiserver's etcd
// in Namespace; its in-cluster DNS names are in the server certificate.
const APIServerService = "isthmus-apiserver"
