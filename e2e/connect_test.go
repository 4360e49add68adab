package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/isthmus-mesh/isthmus/e2e/testbed"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

// TestConnectThenStatusReady connects the clusters with the CLI, as a user
// would, and waits with `isthmus status --wait` until every agent of every
// cluster reads every cluster, synced.
func TestConnectThenStatusReady(t *testing.T) {
	s := newScenario(t)
	var dests []string
	for _, c := range s.env.Clusters[1:] {
		dests = append(dests, c.Context)
	}
	args := []string{"connect", "--context", s.c1.Context, "--destination-context", strings.Join(dests, ","), "--connection-mode", "mesh"}
	s.cli(args...)
	if again := s.cli(args...); !strings.Contains(again.Stdout, "Nothing to change") {
		t.Errorf("a second connect should change nothing:\n%s", again)
	}

	for _, c := range s.env.Clusters {
		res := s.cli("status", "--context", c.Context, "--wait", "--wait-duration", meshTimeout.String())
		if !strings.Contains(res.Stdout, "Ready") {
			t.Errorf("status --wait of %s exited 0 without saying Ready:\n%s", c, res)
		}
		nodes, err := c.Nodes(s.ctx)
		s.must(err, "list nodes")
		var r meshops.StatusReport
		res = s.cli("status", "--context", c.Context, "-o", "json")
		if err := json.Unmarshal([]byte(res.Stdout), &r); err != nil {
			t.Fatalf("status -o json of %s: %v\n%s", c, err, res)
		}
		if !r.Ready || r.AgentsReporting != len(nodes) || len(r.Clusters) != len(s.env.Clusters) {
			t.Errorf("status of %s: ready %t, %d agents reporting for %d nodes, %d clusters; want ready, every node's agent, %d clusters:\n%s",
				c, r.Ready, r.AgentsReporting, len(nodes), len(r.Clusters), len(s.env.Clusters), res.Stdout)
		}
		for _, cs := range r.Clusters {
			if !cs.Configured || cs.Agents != len(nodes) || cs.Connected != cs.Agents || cs.Synced != cs.Agents {
				t.Errorf("status of %s, cluster %s: configured %t, %d agents, %d connected, %d synced; want all %d", c, cs.Name, cs.Configured, cs.Agents, cs.Connected, cs.Synced, len(nodes))
			}
		}
	}
	// The agents' own APIs agree.
	s.waitAgentsRead(s.env.Clusters, s.env.Clusters...)
}

// TestDisconnectWithdrawsRemoteState disconnects two connected clusters and
// checks that each one's agents drop everything of the other (identities,
// ipcache entries, service backends), that requests to a global service
// are then answered locally only, and that pod traffic across the clusters
// stops. The clusters are connected again afterwards.
func TestDisconnectWithdrawsRemoteState(t *testing.T) {
	s := newScenario(t)
	s.connectAll()
	c1, c2 := s.c1, s.c2
	s.deployEcho(c1, 2)
	s.deployEcho(c2, 2)
	vip, frontend := s.globalService(c1, serviceOptions{})
	s.globalService(c2, serviceOptions{})
	client := s.clientPod(c1)
	s.waitPods(c1, echoName, 2)
	remotePods := s.waitPods(c2, echoName, 2)
	remote := net.JoinHostPort(remotePods[0].Status.PodIP, fmt.Sprint(echoPort))
	addr := net.JoinHostPort(vip, fmt.Sprint(svcPort))

	// Connected: both clusters answer, and a pod of c2 is reachable by IP.
	s.waitAnswers(c1, client, addr, c1.Name, c2.Name)
	s.eventually("a pod of "+c2.Name+" to answer by its IP", meshTimeout, func() (bool, string) {
		resp, err := s.request(c1, client, remote)
		if err != nil {
			return false, err.Error()
		}
		return resp.Pod == remotePods[0].Name, fmt.Sprintf("answered by %+v", resp.Identity)
	})

	s.afterwards(func(context.Context) { s.connectAll() })
	s.cli("disconnect", "--context", c1.Context, "--destination-context", c2.Context)

	for _, pair := range [][2]*testbed.Cluster{{c1, c2}, {c2, c1}} {
		local, gone := pair[0], pair[1]
		s.waitAgentsRead([]*testbed.Cluster{local}, local)
		s.waitWithdrawn(local, gone)
	}
	s.waitBackendClusters(c1, frontend, c1)
	s.waitAnswers(c1, client, addr, c1.Name)
	if resp, err := s.request(c1, client, remote); err == nil {
		t.Errorf("after the disconnect, pod %s of %s still answers %s by IP: %+v", remotePods[0].Name, c2, c1, resp.Identity)
	}

	// The agents report through their MeshAgent objects a moment after
	// their maps change: wait, as a user would, until status is ready,
	// which it is not while an agent still reports the removed cluster.
	var r meshops.StatusReport
	res := s.cli("status", "--context", c1.Context, "--wait", "--wait-duration", meshTimeout.String(), "-o", "json")
	s.must(json.Unmarshal([]byte(res.Stdout), &r), "decode status -o json")
	for _, cs := range r.Clusters {
		if cs.Name == c2.Name {
			t.Errorf("after the disconnect, status of %s still lists %s: %+v", c1, c2, cs)
		}
	}
}

// waitWithdrawn waits until no agent of local holds anything of cluster
// gone: no identity, no ipcache entry, no service backend.
func (s *scenario) waitWithdrawn(local, gone *testbed.Cluster) {
	s.t.Helper()
	nodes, err := local.AgentNodes(s.ctx)
	s.must(err, "list agents")
	for _, n := range nodes {
		s.eventually(fmt.Sprintf("agent of %s/%s to drop the state of %s", local, n, gone), meshTimeout, func() (bool, string) {
			m, err := local.AgentMaps(s.ctx, n)
			if err != nil {
				return false, err.Error()
			}
			left := remains(m, gone)
			return len(left) == 0, strings.Join(left, "\n")
		})
	}
}

// remains lists what m still holds of cluster c.
func remains(m *testbed.AgentMaps, c *testbed.Cluster) []string {
	var out []string
	for _, e := range m.IPCache {
		if e.ClusterId == c.ID {
			out = append(out, fmt.Sprintf("ipcache %s (identity %d, tunnel %s)", e.Prefix, e.Identity, e.TunnelEndpoint))
		}
	}
	for _, i := range m.Identities {
		if i.Cluster == c.Name {
			out = append(out, fmt.Sprintf("identity %d", i.Id))
		}
	}
	for _, svc := range m.Services {
		for _, b := range svc.Backends {
			if b.ClusterId == c.ID {
				out = append(out, fmt.Sprintf("backend %s:%d of %s", b.Address, b.Port, svc.Frontend))
			}
		}
	}
	return out
}
