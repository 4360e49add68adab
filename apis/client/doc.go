// Package client talks to the isthmus.dev API of a Kubernetes cluster: a
// small typed client (Clientset) built on client-go's generic typed client,
// shared informers holding typed objects, and InstallCRDs, which installs
// the CRDs the Helm chart ships (package charts).
//
// There is no generated clientset: the generic client (k8s.io/client-go/
// gentype) is the code a generated one would wrap, and two resources do not
// earn a code generator. Everything here is safe for concurrent use.
//
// It may import client-go, apiextensions-apiserver's client, apis/v1alpha1
// and charts; nothing from agent/, apiserver/, datapath/ or cmd/.
package client
