// Package testenv gives integration tests real parts to run against:
//
//   - a real Kubernetes control plane (kube-apiserver on embedded etcd,
//     optionally kube-controller-manager and kube-scheduler), shared by all
//     tests of one test binary, started on first use and stopped when the
//     tests end, with a fresh namespace per test;
//   - a real embedded etcd per test, optionally serving TLS with
//     client-certificate authentication, for the mesh's etcd code.
//
// Use it from a test package like this:
//
//	var kube = testenv.New(testenv.Options{})
//
//	func TestMain(m *testing.M) { testenv.Main(m, kube) }
//
//	func TestSomething(t *testing.T) {
//		k := kube.Kube(t) // k.Client, k.Config, k.Kubeconfig, k.Namespace
//		...
//	}
//
// The control-plane binaries come from internal/kubebin; the first run on a
// machine builds them (minutes; `make kube` does it ahead of time). When they
// cannot be built or the apiserver does not start, tests fail — nothing here
// needs root, so there is no reason to skip — except under -short (the unit
// tier), where Kube skips. Etcd runs in every tier: it starts in well under
// a second.
//
// It must not import apiserver/, agent/, datapath/ or cmd/, and only test
// code may import it.
package testenv
