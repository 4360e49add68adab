// Package certs is the mesh's certificate authority and TLS plumbing: it
// creates a CA, issues the etcd server certificate and the client
// certificates whose common name is the etcd user (admin-<c>, local-<c>,
// remote, remote-<c>), encodes and decodes PEM, serves certificates from
// files that are picked up again when rotated (FileSource), and describes
// the same certificates as cert-manager resources for clusters that run
// cert-manager.
//
// The CLI, the lab, the mesh apiserver and the agent all call it. It must not
// import apiserver/, agent/, datapath/ or cmd/, nor any Kubernetes client.
package certs
