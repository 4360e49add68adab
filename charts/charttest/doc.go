// Package charttest tests the Helm chart charts/isthmus with real parts:
// the pinned helm binary (internal/helmbin) renders it with default and
// other values; every object it renders is applied, with server-side dry
// run and strict field validation, to a real kube-apiserver
// (internal/testenv), so a schema error in a template fails; the container
// arguments are parsed by the real binaries; and the real isthmus-apiserver
// and isthmus-agent run as local processes from the rendered pod specs
// (their Secret and ConfigMap volumes and environment resolved against the
// cluster, as a kubelet would) with the service account credentials and
// RBAC the chart gives them, and must start and sync without a forbidden
// request.
//
// It holds tests only. It must not be imported.
package charttest
