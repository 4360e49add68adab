package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/e2e/testbed"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// requestLoop sends requests one after the other from a pod until
// stopped, and records who answered each. Safe for concurrent use.
type requestLoop struct {
	mu      sync.Mutex // guards the fields below
	answers map[string]int
	errors  []string
	total   int
}

// count returns the requests sent so far.
func (l *requestLoop) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

func (l *requestLoop) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return tally{byCluster: l.answers, errors: l.errors}.String()
}

// startLoop starts sending requests from pod of c to addr; stop ends the
// loop and waits for it.
func (s *scenario) startLoop(c *testbed.Cluster, pod, addr string) (l *requestLoop, stop func()) {
	l = &requestLoop{answers: map[string]int{}}
	ctx, cancel := context.WithCancel(s.ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			resp, err := s.request(c, pod, addr)
			if ctx.Err() != nil {
				return // cut short by stop, not failed
			}
			l.mu.Lock()
			l.total++
			if err != nil {
				l.errors = append(l.errors, fmt.Sprintf("request %d at %s: %v", l.total, time.Now().Format("15:04:05.000"), err))
			} else {
				l.answers[resp.Cluster]++
			}
			l.mu.Unlock()
		}
	})
	return l, func() { cancel(); wg.Wait() }
}

// TestAgentRestartDuringRequestLoop restarts node agents, one after the
// other, while a client pod sends requests to a global service with
// backends in both clusters, one request after the other: first the agent
// of the client's node, then every other agent of both clusters (the ends
// of the tunnels to the backends). No request may fail, since the datapath
// (pinned maps, attached programs, tunnels) outlives the agent process.
func TestAgentRestartDuringRequestLoop(t *testing.T) {
	s := newScenario(t)
	g := s.deployGlobalEcho(serviceOptions{affinity: meshconfig.AffinityNone})
	s.waitAnswers(s.c1, g.client1, g.addr1, s.c1.Name, s.c2.Name)
	type agent struct {
		c    *testbed.Cluster
		node string
	}
	order := []agent{{s.c1, s.clientNode(s.c1, g.client1)}}
	for _, c := range s.env.Clusters {
		nodes, err := c.AgentNodes(s.ctx)
		s.must(err, "list agents")
		for _, n := range nodes {
			if c != s.c1 || n != order[0].node {
				order = append(order, agent{c, n})
			}
		}
	}

	loop, stop := s.startLoop(s.c1, g.client1, g.addr1)
	defer stop()
	s.eventually("10 requests before the first restart", time.Minute, func() (bool, string) { return loop.count() >= 10, loop.String() })
	var quiet []string
	for _, a := range order {
		before, begin := loop.count(), time.Now()
		s.must(a.c.RestartAgent(s.ctx, a.node), "restart the agent of "+a.node)
		during := loop.count() - before
		t.Logf("agent of %s/%s restarted in %s; %d requests were sent meanwhile", a.c, a.node, time.Since(begin).Round(time.Millisecond), during)
		if during == 0 {
			quiet = append(quiet, a.node)
		}
		s.waitAgentsRead([]*testbed.Cluster{a.c}, s.env.Clusters...)
		after := loop.count()
		s.eventually(fmt.Sprintf("10 requests after the agent of %s synced", a.node), time.Minute, func() (bool, string) { return loop.count() >= after+10, loop.String() })
	}
	stop()

	loop.mu.Lock()
	defer loop.mu.Unlock()
	t.Logf("%d requests across %d agent restarts: %s", loop.total, len(order), tally{byCluster: loop.answers, errors: loop.errors})
	if len(loop.errors) > 0 {
		t.Errorf("%d of %d requests failed across the agent restarts:\n%s", len(loop.errors), loop.total, strings.Join(loop.errors, "\n"))
	}
	if len(quiet) > 0 {
		t.Errorf("no request was sent while the agents of %v restarted; the loop proves nothing for them", quiet)
	}
	if loop.answers[s.c1.Name] == 0 || loop.answers[s.c2.Name] == 0 {
		t.Errorf("answers during the loop: %v; want both clusters", loop.answers)
	}
}

// TestMeshAPIServerRestartLeavesAgentsConsistent restarts a cluster's mesh
// apiserver and checks that afterwards every agent of every cluster holds
// exactly what the clusters export: its ipcache, identities and service
// maps equal what the mesh etcd of every connected cluster holds (and its
// own cluster's global Services), also after a change made once the
// apiserver is back.
func TestMeshAPIServerRestartLeavesAgentsConsistent(t *testing.T) {
	s := newScenario(t)
	s.deployGlobalEcho(serviceOptions{affinity: meshconfig.AffinityLocal})
	// c2 keeps its backends to itself: its agents take them from its
	// EndpointSlices, c1's do not see them.
	s.annotateService(s.c2, serviceOptions{affinity: meshconfig.AffinityLocal, unshared: true})
	s.waitConsistent("before the restart")

	s.must(s.c1.RestartMeshAPIServer(s.ctx), "restart the mesh apiserver of "+s.c1.Name)
	s.waitAgentsRead(s.env.Clusters, s.env.Clusters...)
	s.waitConsistent("after the restart")

	s.scaleEcho(s.c1, 3)
	s.waitPods(s.c1, echoName, 3)
	s.waitConsistent("after scaling echo in " + s.c1.Name)
}

// waitConsistent waits until every agent's maps equal what the clusters
// export (testbed.ExpectedMaps), failing with the differences.
func (s *scenario) waitConsistent(when string) {
	s.t.Helper()
	etcds := map[string]*clientv3.Client{}
	for _, c := range s.env.Clusters {
		cli, err := c.MeshEtcd(s.ctx)
		s.must(err, "connect to the mesh etcd")
		defer cli.Close()
		etcds[c.Name] = cli
	}
	for _, c := range s.env.Clusters {
		nodes, err := c.AgentNodes(s.ctx)
		s.must(err, "list agents")
		for _, n := range nodes {
			s.eventually(fmt.Sprintf("agent of %s/%s to hold what the clusters export (%s)", c, n, when), meshTimeout, func() (bool, string) {
				got, diff, err := s.agentDiff(c, n, etcds)
				if err != nil {
					return false, err.Error()
				}
				if len(diff) == 0 {
					s.t.Logf("agent of %s/%s holds %d ipcache entries, %d identities, %d services, as exported", c, n, len(got.IPCache), len(got.Identities), len(got.Services))
					return true, ""
				}
				if len(diff) > 40 {
					diff = append(diff[:40], fmt.Sprintf("... and %d more", len(diff)-40))
				}
				return false, strings.Join(diff, "\n")
			})
		}
	}
}

// agentDiff compares node's agent in c with what it should hold.
func (s *scenario) agentDiff(c *testbed.Cluster, node string, etcds map[string]*clientv3.Client) (*testbed.AgentMaps, []string, error) {
	local, err := testbed.ReadLocalView(s.ctx, c, node)
	if err != nil {
		return nil, nil, err
	}
	var exports []*testbed.ClusterExport
	for _, o := range s.env.Clusters {
		ex, err := testbed.ReadExport(s.ctx, etcds[o.Name], o.Name, o.ID, local.MaxConnectedClusters)
		if err != nil {
			return nil, nil, err
		}
		if len(ex.Invalid) > 0 {
			return nil, nil, fmt.Errorf("the mesh etcd of %s holds values that do not decode: %s", o, strings.Join(ex.Invalid, ", "))
		}
		exports = append(exports, ex)
	}
	got, err := c.AgentMaps(s.ctx, node)
	if err != nil {
		return nil, nil, err
	}
	return got, testbed.DiffMaps(testbed.ExpectedMaps(local, exports), got), nil
}
