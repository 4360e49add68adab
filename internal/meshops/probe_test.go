package meshops

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd/meshetcdtest"
	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// meshEtcd runs a mesh etcd of cluster set up as the mesh apiserver sets
// up its own (meshetcd.Access), with cfg as its published cluster config,
// or none when cfg is nil.
func meshEtcd(t *testing.T, cluster string, cfg *protocol.ClusterConfig) *meshetcdtest.Env {
	t.Helper()
	env := meshetcdtest.Start(t, cluster)
	if cfg != nil {
		if _, err := env.Admin.Put(context.Background(), protocol.ClusterConfigKey(cluster), string(cfg.Encode())); err != nil {
			t.Fatal(err)
		}
	}
	return env
}

// TestProbeEndpoint dials real mesh etcds the ways a user can get an
// endpoint wrong.
func TestProbeEndpoint(t *testing.T) {
	cfgB := protocol.NewClusterConfig(2, 255)
	etcdB := meshEtcd(t, "b", &cfgB)
	// c is another cluster whose etcd someone listed as b's endpoint.
	cfgC := protocol.NewClusterConfig(3, 255)
	etcdC := meshEtcd(t, "c", &cfgC)
	// unpublished is b's etcd before its apiserver published the config.
	unpublished := meshEtcd(t, "b", nil)
	epB, epC := etcdB.Endpoints()[0], etcdC.Endpoints()[0]

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
	port := epB[strings.LastIndex(epB, ":")+1:]

	// state is cluster b as isthmus-config and Secret isthmus-ca say.
	state := func(id uint32, ca *certs.CA) *clusterState {
		return &clusterState{c: &Cluster{context: "ctx-b"}, ca: ca, config: MeshConfig{ClusterName: "b", ClusterID: id, MaxConnectedClusters: 255}}
	}
	for _, tc := range []struct {
		name     string
		endpoint string
		id       uint32
		ca       *certs.CA // b's CA
		wrong    bool      // a wrongClusterError
		want     string    // in the error; "" for success
	}{
		{name: "answers as b", endpoint: epB, id: 2, ca: etcdB.CA},
		{name: "etcd of another cluster", endpoint: epC, id: 2, ca: etcdB.CA, wrong: true, want: "not signed by the mesh CA of cluster \"b\""},
		// c's CA is b's too (a CA shared across clusters): the remote
		// role of c's etcd may read c's config only.
		{name: "same CA, another cluster", endpoint: epC, id: 2, ca: etcdC.CA, wrong: true, want: `refuses user "remote" to read cilium/cluster-config/b`},
		{name: "cluster config not published", endpoint: unpublished.Endpoints()[0], id: 2, ca: unpublished.CA, wrong: true, want: "has no cilium/cluster-config/b"},
		{name: "other cluster ID", endpoint: epB, id: 9, ca: etcdB.CA, wrong: true, want: "answers as cluster \"b\" with ID 2 and maxConnectedClusters 255, but isthmus-config says ID 9"},
		{name: "nothing listens", endpoint: closedEP, id: 2, ca: etcdB.CA, want: "connection refused"},
		{name: "no answer", endpoint: "https://" + silent.Addr().String(), id: 2, ca: etcdB.CA, want: "no answer within 500ms"},
		{name: "name not in the certificate", endpoint: "https://localhost:" + port, id: 2, ca: etcdB.CA, want: `not valid for "localhost"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := state(tc.id, tc.ca)
			kp, err := tc.ca.IssueClient(protocol.RemoteUser, time.Hour)
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
		s := state(2, etcdB.CA)
		s.config.MeshEndpoints = []string{closedEP, epB}
		problem, notes := probeCluster(context.Background(), s, time.Second)
		if problem != nil || len(notes) != 1 || !strings.Contains(notes[0], closedEP) {
			t.Fatalf("problem %v, notes %q", problem, notes)
		}
	})
	t.Run("no endpoint answers", func(t *testing.T) {
		s := state(2, etcdB.CA)
		s.config.MeshEndpoints = []string{closedEP}
		problem, _ := probeCluster(context.Background(), s, time.Second)
		if problem == nil || !strings.Contains(problem.Error(), "no mesh endpoint of cluster \"b\" (context \"ctx-b\") answers") || !strings.Contains(problem.Error(), "--skip-endpoint-check") {
			t.Fatalf("problem %v", problem)
		}
	})
	t.Run("a wrong endpoint beside a good one", func(t *testing.T) {
		s := state(2, etcdB.CA)
		s.config.MeshEndpoints = []string{epB, epC}
		problem, _ := probeCluster(context.Background(), s, time.Second)
		if problem == nil || !strings.Contains(problem.Error(), epC) {
			t.Fatalf("problem %v", problem)
		}
	})
}
