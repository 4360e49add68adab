// Package testbed gives the e2e suites the clusters they run on, behind one
// interface, so that each scenario has one test body:
//
//   - a local lab (internal/lab) of two clusters, which the testbed brings
//     up on first use and takes down when the test binary ends (the
//     default; needs root), or
//   - existing kubeconfig contexts (Options.Contexts, the suite's
//     `-contexts a,b` flag), e.g. kind clusters with the mesh installed by
//     the Helm chart, where the testbed assumes nothing of the lab.
//
// What differs between the two is behind Cluster's methods: running a
// command in a pod (the lab runs it in the pod's network namespace and its
// node's cgroup; on real clusters it goes through the Kubernetes exec API),
// restarting a node agent (lab supervisor restart vs deleting the agent
// pod), restarting a mesh apiserver, reading an agent's status and maps
// (its gRPC API on the lab vs `isthmus-agent dump` exec'd in its pod), and
// reaching a cluster's mesh etcd (the lab's admin certificate files vs the
// cluster's admin certificate Secret and published mesh endpoint).
//
// Use it from a test package like this:
//
//	var bed = testbed.New(testbed.OptionsFromFlags())
//
//	func TestMain(m *testing.M) { testbed.Main(m, bed) }
//
//	func TestSomething(t *testing.T) {
//		env := bed.Env(t) // starts the lab on first use
//		c1 := env.Clusters[0]
//		...
//	}
//
// It is test plumbing: only tests may import it. It must not import
// apiserver/, agent/ (except the agent's public API types in
// agent/api/agentv1) or datapath/.
package testbed
