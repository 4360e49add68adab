// Package meshops prepares Kubernetes clusters for the mesh and connects
// them: Enable (the mesh CA, certificates and isthmus-config of one
// cluster), Connect and Disconnect (per direction "X reads Y": a client
// certificate signed by Y's CA, X's isthmus-clustermesh Secret entry for Y
// and Y's grant to X in its remote-readers ConfigMap), and Status (what the
// cluster's agents report, against what is configured).
//
// Every operation works on a Cluster, which is any Kubernetes API reached
// through a rest.Config: a kubeconfig context (LoadKubeconfig), a lab
// cluster or a test control plane. The isthmus CLI, the lab and the e2e
// suite call the same functions. Operations read and check everything and
// issue every certificate before their first write, and order their writes
// so that an interrupted run leaves a state the next run repairs; running
// one twice changes nothing. Connect writes the grants, waits until the
// mesh apiserver of each cluster that is read has acted on them (it reads
// with the certificate it issued), and only then writes the entries the
// agents use: their first read succeeds, and a cluster that does not act
// on its grant leaves no entry behind.
//
// From Go (the lab, the e2e suite):
//
//	east, _ := meshops.NewCluster("east", eastRESTConfig)
//	west, _ := meshops.NewCluster("west", westRESTConfig)
//	_, err := meshops.Enable(ctx, east, meshops.EnableOptions{
//		ClusterName: "east", ClusterID: 1, MeshEndpoints: []string{"https://10.0.0.1:2379"}})
//	...
//	_, err = meshops.Connect(ctx, east, []*meshops.Cluster{west}, meshops.ConnectOptions{})
//	report, err := meshops.WaitReady(ctx, east, meshops.WaitOptions{Timeout: 2 * time.Minute})
//
// or open kubeconfig contexts with LoadKubeconfig and Kubeconfig.Cluster.
//
// The package holds no output formatting beyond error messages: callers
// render results. It must not import apiserver/, agent/, datapath/ or
// cmd/, nor internal/cli.
package meshops
