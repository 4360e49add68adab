// Package controlplane runs a real Kubernetes control plane on this machine:
// an in-process etcd (internal/embedetcd) for storage, and kube-apiserver,
// optionally kube-controller-manager and kube-scheduler, as child processes
// built by internal/kubebin. The integration tests (internal/testenv) and
// the local lab (`isthmus lab up`) both run their clusters with it.
//
// What it sets up:
//   - certificates: a cluster CA that signs the apiserver's serving
//     certificate and the client certificates it accepts (admin in
//     system:masters, the controller-manager, the scheduler, and any
//     IssueClientCert hands out), and a separate etcd CA, so only the
//     apiserver can reach its storage; service-account signing keys.
//   - kube-apiserver with client-certificate authentication, Node,RBAC
//     authorization, a configurable service CIDR (default 10.96.0.0/16),
//     bind and advertise addresses and port.
//   - kube-controller-manager with all default controllers (Deployments,
//     ReplicaSets, EndpointSlices, service accounts, namespace deletion,
//     garbage collection, node lifecycle, ...). Pod CIDRs are allocated to
//     Nodes only when Config.ClusterCIDR is set; otherwise whoever
//     registers a Node sets its spec.podCIDR.
//   - kube-scheduler.
//   - an admin kubeconfig, and *rest.Config for clients.
//
// Every file lives under Config.DataDir: etcd/ (data), pki/, kubeconfig/,
// logs/<component>.log. Children die with the process that started them
// (Pdeathsig) and Stop ends them gracefully, then by force, and waits.
//
// It must not import apiserver/, agent/, datapath/, cmd/ or the mesh's
// certs/ package; it is Linux-only.
package controlplane
