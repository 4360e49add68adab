// Package meshetcd runs and secures the etcd a cluster's mesh state lives
// in: an embedded etcd served over TLS with client-certificate
// authentication, the etcd users and roles of PROTOCOL.md "Access" (the
// certificate's common name is the user), and the client the apiserver
// writes through. External etcd clusters get the same users and roles.
//
// It must not import agent/, datapath/ or cmd/, nor Kubernetes clients.
package meshetcd
