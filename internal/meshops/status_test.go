package meshops

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

var statusNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func readyCluster(name string, id uint32, local bool) AgentClusterReport {
	return AgentClusterReport{Name: name, ClusterID: id, Local: local, Connected: true, Ready: true, Entries: KindCounts{Nodes: 2, Services: 1, Identities: 5, IPCache: 7}}
}

func agent(node string, clusters ...AgentClusterReport) AgentReport {
	return AgentReport{Node: node, Cluster: "a", Heartbeat: statusNow.Add(-10 * time.Second), Clusters: clusters}
}

func entries(names ...string) map[string]meshconfig.ClusterEntry {
	m := map[string]meshconfig.ClusterEntry{}
	for _, n := range names {
		m[n] = meshconfig.ClusterEntry{Cluster: n, Endpoints: []string{"https://" + n + ":2379"}}
	}
	return m
}

func TestAggregate(t *testing.T) {
	cfg := &MeshConfig{ClusterName: "a", ClusterID: 1, MaxConnectedClusters: 255, MeshEndpoints: []string{"https://a:2379"}}
	type clusterWant struct {
		name                      string
		configured                bool
		agents, connected, synced int
		ready                     bool
		// problems are substrings of the cluster's problems, in order;
		// hints likewise of their hints.
		problems, hints []string
	}
	for _, tc := range []struct {
		name     string
		in       StatusInput
		ready    bool
		problems []string // report-level
		clusters []clusterWant
	}{
		{
			name:     "not enabled",
			in:       StatusInput{Context: "ctx"},
			problems: []string{`context "ctx" is not enabled`},
		},
		{
			name:  "all synced",
			in:    StatusInput{Config: cfg, Entries: entries("a", "b"), Agents: []AgentReport{agent("n1", readyCluster("a", 1, true), readyCluster("b", 2, false)), agent("n2", readyCluster("a", 1, true), readyCluster("b", 2, false))}},
			ready: true,
			clusters: []clusterWant{
				{name: "a", configured: true, agents: 2, connected: 2, synced: 2, ready: true},
				{name: "b", configured: true, agents: 2, connected: 2, synced: 2, ready: true},
			},
		},
		{
			name:     "configured, no agent reporting",
			in:       StatusInput{Config: cfg, Entries: entries("a", "b")},
			problems: []string{"no agent reports its status"},
			clusters: []clusterWant{{name: "a", configured: true}, {name: "b", configured: true}},
		},
		{
			name: "one agent has the wrong CA",
			in: StatusInput{Config: cfg, Entries: entries("a", "b"), Agents: []AgentReport{
				agent("n1", readyCluster("a", 1, true), readyCluster("b", 2, false)),
				agent("n2", readyCluster("a", 1, true), AgentClusterReport{Name: "b", LastError: "tls: failed to verify certificate: x509: certificate signed by unknown authority"}),
				agent("n3", readyCluster("a", 1, true), AgentClusterReport{Name: "b", LastError: "tls: failed to verify certificate: x509: certificate signed by unknown authority"}),
			}},
			clusters: []clusterWant{
				{name: "a", configured: true, agents: 3, connected: 3, synced: 3, ready: true},
				{name: "b", configured: true, agents: 3, connected: 1, synced: 1, problems: []string{"unknown authority"}, hints: []string{"isthmus connect --context ctx"}},
			},
		},
		{
			name: "duplicate cluster ID",
			in: StatusInput{Config: cfg, Entries: entries("a", "b"), Agents: []AgentReport{
				agent("n1", readyCluster("a", 1, true), AgentClusterReport{Name: "b", ClusterID: 1, LastError: `duplicate cluster ID: cluster "b" announces cluster ID 1, which the local cluster "a" already uses`}),
			}},
			clusters: []clusterWant{
				{name: "a", configured: true, agents: 1, connected: 1, synced: 1, ready: true},
				{name: "b", configured: true, agents: 1, problems: []string{"duplicate cluster ID"}, hints: []string{"another --cluster-id"}},
			},
		},
		{
			name: "syncing without error",
			in: StatusInput{Config: cfg, Entries: entries("a", "b"), Agents: []AgentReport{
				agent("n1", readyCluster("a", 1, true), AgentClusterReport{Name: "b", ClusterID: 2, Connected: true}),
			}},
			clusters: []clusterWant{
				{name: "a", configured: true, agents: 1, connected: 1, synced: 1, ready: true},
				{name: "b", configured: true, agents: 1, connected: 1, problems: []string{"1 of 1 agents are still connecting or syncing"}},
			},
		},
		{
			name: "an error kept after recovery is not a problem",
			in: StatusInput{Config: cfg, Entries: entries("a"), Agents: []AgentReport{
				agent("n1", func() AgentClusterReport {
					c := readyCluster("a", 1, true)
					c.LastError = "connection refused"
					return c
				}()),
			}},
			ready:    true,
			clusters: []clusterWant{{name: "a", configured: true, agents: 1, connected: 1, synced: 1, ready: true}},
		},
		{
			name: "new entry not yet picked up",
			in: StatusInput{Config: cfg, Entries: entries("a", "b"), Agents: []AgentReport{
				agent("n1", readyCluster("a", 1, true)),
			}},
			clusters: []clusterWant{
				{name: "a", configured: true, agents: 1, connected: 1, synced: 1, ready: true},
				{name: "b", configured: true, agents: 1, problems: []string{"agents do not report this cluster yet"}},
			},
		},
		{
			name: "being withdrawn",
			in: StatusInput{Config: cfg, Entries: entries("a"), Agents: []AgentReport{
				agent("n1", readyCluster("a", 1, true), readyCluster("b", 2, false)),
			}},
			clusters: []clusterWant{
				{name: "a", configured: true, agents: 1, connected: 1, synced: 1, ready: true},
				{name: "b", agents: 1, connected: 1, synced: 1, problems: []string{"being withdrawn"}},
			},
		},
		{
			name: "stale agent",
			in: StatusInput{Config: cfg, Entries: entries("a"), Agents: []AgentReport{
				agent("n1", readyCluster("a", 1, true)),
				{Node: "n2", Cluster: "a", Heartbeat: statusNow.Add(-time.Hour), Clusters: []AgentClusterReport{readyCluster("a", 1, true)}},
			}},
			problems: []string{"1 agent(s) have not reported for more than 3m0s"},
			clusters: []clusterWant{{name: "a", configured: true, agents: 1, connected: 1, synced: 1, ready: true}},
		},
		{
			name: "agent of another cluster",
			in: StatusInput{Config: cfg, Entries: entries("a"), Agents: []AgentReport{
				agent("n1", readyCluster("a", 1, true)),
				{Node: "n2", Cluster: "z", Heartbeat: statusNow},
			}},
			problems: []string{`the agent on node n2 runs as cluster "z"`},
			clusters: []clusterWant{{name: "a", configured: true, agents: 1, connected: 1, synced: 1, ready: true}},
		},
		{
			name: "no own entry and a broken entry",
			in: StatusInput{Config: cfg, Entries: entries("b"), EntryErrors: []error{errors.New(`clustermesh entry "c": etcd config lists no endpoints`)}, Agents: []AgentReport{
				agent("n1", readyCluster("b", 2, false)),
			}},
			problems: []string{`clustermesh entry "c"`, `no entry for "a" itself`},
			clusters: []clusterWant{{name: "b", configured: true, agents: 1, connected: 1, synced: 1, ready: true}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if in.Context == "" {
				in.Context = "ctx"
			}
			in.Now = statusNow
			r := Aggregate(in)
			if r.Ready != tc.ready {
				t.Errorf("Ready = %v, want %v; reasons %q", r.Ready, tc.ready, r.NotReadyReasons())
			}
			if !tc.ready && len(r.NotReadyReasons()) == 0 {
				t.Error("not ready without a reason")
			}
			if len(r.Problems) != len(tc.problems) {
				t.Errorf("problems = %+v, want %d", r.Problems, len(tc.problems))
			} else {
				for i, w := range tc.problems {
					if !strings.Contains(r.Problems[i].Message, w) {
						t.Errorf("problem %d = %q, want %q in it", i, r.Problems[i].Message, w)
					}
					if r.Problems[i].Hint == "" {
						t.Errorf("problem %q has no hint", r.Problems[i].Message)
					}
				}
			}
			if len(r.Clusters) != len(tc.clusters) {
				t.Fatalf("clusters = %+v, want %d", r.Clusters, len(tc.clusters))
			}
			for i, w := range tc.clusters {
				c := r.Clusters[i]
				if c.Name != w.name || c.Configured != w.configured || c.Agents != w.agents || c.Connected != w.connected || c.Synced != w.synced || c.Ready != w.ready {
					t.Errorf("cluster %d = %s configured=%v agents=%d connected=%d synced=%d ready=%v, want %+v", i, c.Name, c.Configured, c.Agents, c.Connected, c.Synced, c.Ready, w)
				}
				if len(c.Problems) != len(w.problems) {
					t.Errorf("cluster %s problems = %+v, want %q", c.Name, c.Problems, w.problems)
					continue
				}
				for j, p := range w.problems {
					if !strings.Contains(c.Problems[j].Message, p) {
						t.Errorf("cluster %s problem %d = %q, want %q in it", c.Name, j, c.Problems[j].Message, p)
					}
				}
				for j, h := range w.hints {
					if !strings.Contains(c.Problems[j].Hint, h) {
						t.Errorf("cluster %s hint %d = %q, want %q in it", c.Name, j, c.Problems[j].Hint, h)
					}
				}
			}
		})
	}
}

func TestAggregateGroupsErrorsByMessage(t *testing.T) {
	cfg := &MeshConfig{ClusterName: "a", ClusterID: 1, MaxConnectedClusters: 255}
	refused := AgentClusterReport{Name: "b", LastError: "dial tcp 10.0.0.2:2379: connect: connection refused"}
	timeout := AgentClusterReport{Name: "b", LastError: "context deadline exceeded"}
	r := Aggregate(StatusInput{Context: "ctx", Config: cfg, Entries: entries("a", "b"), Now: statusNow, Agents: []AgentReport{
		agent("n3", readyCluster("a", 1, true), refused),
		agent("n1", readyCluster("a", 1, true), refused),
		agent("n2", readyCluster("a", 1, true), timeout),
	}})
	b := r.Clusters[1]
	if len(b.Problems) != 2 {
		t.Fatalf("problems = %+v", b.Problems)
	}
	if b.Problems[0].Message != timeout.LastError || !slices.Equal(b.Problems[0].Nodes, []string{"n2"}) {
		t.Errorf("first problem = %+v", b.Problems[0])
	}
	if b.Problems[1].Message != refused.LastError || !slices.Equal(b.Problems[1].Nodes, []string{"n1", "n3"}) {
		t.Errorf("second problem = %+v", b.Problems[1])
	}
	for _, p := range b.Problems {
		if !strings.Contains(p.Hint, "cannot reach the mesh endpoint of b") {
			t.Errorf("hint for %q = %q", p.Message, p.Hint)
		}
	}
}

func TestAggregateCertificateDueIsAWarning(t *testing.T) {
	ca, err := certs.NewCA("t", 0)
	if err != nil {
		t.Fatal(err)
	}
	// Issued a year ago, valid for 13 months: less than a third left.
	kp, err := ca.Issue(certs.Request{CommonName: "remote-a", NotBefore: statusNow.AddDate(-1, 0, 0), Validity: 395 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e := entries("a", "b")
	eb := e["b"]
	eb.Cert = kp.CertPEM
	e["b"] = eb
	r := Aggregate(StatusInput{Context: "ctx", Config: &MeshConfig{ClusterName: "a", ClusterID: 1, MaxConnectedClusters: 255}, Entries: e, Now: statusNow,
		Agents: []AgentReport{agent("n1", readyCluster("a", 1, true), readyCluster("b", 2, false))}})
	b := r.Clusters[1]
	if !r.Ready || len(b.Warnings) != 1 || !strings.Contains(b.Warnings[0].Hint, "to renew it") || b.CertExpiry == nil || !b.CertExpiry.Equal(kp.Cert.NotAfter) {
		t.Errorf("ready=%v cluster b = %+v", r.Ready, b)
	}
}

// BenchmarkAggregate is status at the scale of ClusterMesh's scale test:
// 250 clusters; 100 agents reporting on each, one agent in ten failing to
// reach one cluster.
func BenchmarkAggregate(b *testing.B) {
	const clusters, agents = 250, 100
	names := make([]string, clusters)
	for i := range names {
		names[i] = fmt.Sprintf("cluster-%03d", i)
	}
	cfg := &MeshConfig{ClusterName: names[0], ClusterID: 1, MaxConnectedClusters: 255}
	in := StatusInput{Context: "ctx", Config: cfg, Entries: entries(names...), Now: statusNow}
	for n := range agents {
		a := AgentReport{Node: fmt.Sprintf("node-%03d", n), Cluster: names[0], Heartbeat: statusNow}
		for i, name := range names {
			c := readyCluster(name, uint32(i+1), i == 0)
			if n%10 == 0 && i == n {
				c.Ready, c.LastError = false, "dial tcp 10.0.0.2:2379: connect: connection refused"
			}
			a.Clusters = append(a.Clusters, c)
		}
		in.Agents = append(in.Agents, a)
	}
	b.ReportAllocs()
	for b.Loop() {
		if r := Aggregate(in); r.Ready || len(r.Clusters) != clusters {
			b.Fatal("unexpected report")
		}
	}
}
