package meshops

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshops/meshopstest"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// TestProbeEndpoint dials real mesh etcds the ways a user can get an
// endpoint wrong.
func TestProbeEndpoint(t *testing.T) {
	ca, err := certs.NewCA("isthmus-ca-b", 0)
	if err != nil {
		t.Fatal(err)
	}
	etcdB := meshopstest.StartMeshEtcd(t, "b", ca, meshopstest.LoopbackServerCert(t, ca), protocol.NewClusterConfig(2, 255))
	// c is another cluster whose etcd someone listed as b's endpoint.
	caC, err := certs.NewCA("isthmus-ca-c", 0)
	if err != nil {
		t.Fatal(err)
	}
	etcdC := meshopstest.StartMeshEtcd(t, "c", caC, meshopstest.LoopbackServerCert(t, caC), protocol.NewClusterConfig(3, 255))
	// c2 is an etcd with b's CA (a CA shared across clusters): its remote
	// role may read c2's config only.
	etcdC2 := meshopstest.StartMeshEtcd(t, "c2", ca, meshopstest.LoopbackServerCert(t, ca), protocol.NewClusterConfig(3, 255))
	// unpublished is b's etcd before its apiserver published the config.
	unpublished := meshopstest.StartMeshEtcd(t, "b", ca, meshopstest.LoopbackServerCert(t, ca), protocol.NewClusterConfig(2, 255))
	if _, err := unpublished.Admin.Delete(context.Background(), protocol.ClusterConfigKey("b")); err != nil {
		t.Fatal(err)
	}

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedEP := "https://" + closed.Addr().String()
	closed.Close()
	// silent accepts connections and never answers.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	port := etcdB.Endpoint[strings.LastIndex(etcdB.Endpoint, ":")+1:]

	state := func(id uint32) *clusterState {
		return &clusterState{c: &Cluster{context: "ctx-b"}, ca: ca, config: MeshConfig{ClusterName: "b", ClusterID: id, MaxConnectedClusters: 255}}
	}
	for _, tc := range []struct {
		name     string
		endpoint string
		id       uint32
		wrong    bool   // a wrongClusterError
		want     string // in the error; "" for success
	}{
		{name: "answers as b", endpoint: etcdB.Endpoint, id: 2},
		{name: "etcd of another cluster", endpoint: etcdC.Endpoint, id: 2, wrong: true, want: "not signed by the mesh CA of cluster \"b\""},
		{name: "same CA, another cluster", endpoint: etcdC2.Endpoint, id: 2, wrong: true, want: `refuses user "remote" to read cilium/cluster-config/b`},
		{name: "cluster config not published", endpoint: unpublished.Endpoint, id: 2, wrong: true, want: "has no cilium/cluster-config/b"},
		{name: "other cluster ID", endpoint: etcdB.Endpoint, id: 9, wrong: true, want: "answers as cluster \"b\" with ID 2 and maxConnectedClusters 255, but isthmus-config says ID 9"},
		{name: "nothing listens", endpoint: closedEP, id: 2, want: "connection refused"},
		{name: "no answer", endpoint: "https://" + silent.Addr().String(), id: 2, want: "no answer within 500ms"},
		{name: "name not in the certificate", endpoint: "https://localhost:" + port, id: 2, want: `not valid for "localhost"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := state(tc.id)
			kp, err := ca.IssueClient(protocol.RemoteUser, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			err = probeEndpoint(context.Background(), s, tc.endpoint, kp, 500*time.Millisecond)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("probe: %v", err)
				}
				return
			}
			var wrong *wrongClusterError
			if err == nil || !strings.Contains(err.Error(), tc.want) || errors.As(err, &wrong) != tc.wrong {
				t.Fatalf("probe = %v (wrong cluster: %v), want %q (wrong cluster: %v)", err, errors.As(err, &wrong), tc.want, tc.wrong)
			}
		})
	}

	t.Run("one of two endpoints answers", func(t *testing.T) {
		s := state(2)
		s.config.MeshEndpoints = []string{closedEP, etcdB.Endpoint}
		problem, notes := probeCluster(context.Background(), s, time.Second)
		if problem != nil || len(notes) != 1 || !strings.Contains(notes[0], closedEP) {
			t.Fatalf("problem %v, notes %q", problem, notes)
		}
	})
	t.Run("no endpoint answers", func(t *testing.T) {
		s := state(2)
		s.config.MeshEndpoints = []string{closedEP}
		problem, _ := probeCluster(context.Background(), s, time.Second)
		if problem == nil || !strings.Contains(problem.Error(), "no mesh endpoint of cluster \"b\" (context \"ctx-b\") answers") || !strings.Contains(problem.Error(), "--skip-endpoint-check") {
			t.Fatalf("problem %v", problem)
		}
	})
	t.Run("a wrong endpoint beside a good one", func(t *testing.T) {
		s := state(2)
		s.config.MeshEndpoints = []string{etcdB.Endpoint, etcdC.Endpoint}
		problem, _ := probeCluster(context.Background(), s, time.Second)
		if problem == nil || !strings.Contains(problem.Error(), etcdC.Endpoint) {
			t.Fatalf("problem %v", problem)
		}
	})
}
