// Package meshconfig names the Kubernetes objects through which the mesh's
// parts find each other — the isthmus-system namespace, its ConfigMap and
// Secrets, annotation keys — and encodes the isthmus-clustermesh Secret
// (PROTOCOL.md, "The connection config"). The CLI writes these objects; the
// apiserver, agents and Helm chart read them; every name lives here once.
//
// It must not import apiserver/, agent/, datapath/ or cmd/.
package meshconfig
