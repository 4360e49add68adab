package e2e

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/e2e/testbed"
)

// meshTimeout bounds a wait for the mesh to converge after a change.
const meshTimeout = 2 * time.Minute

// connectAll connects c1 with every other cluster (idempotent: a second
// run changes nothing) and waits until every agent of every cluster reads
// every cluster, synced.
func (s *scenario) connectAll() {
	s.t.Helper()
	var dests []string
	for _, c := range s.env.Clusters[1:] {
		dests = append(dests, c.Context)
	}
	s.cli("connect", "--context", s.c1.Context, "--destination-context", strings.Join(dests, ","), "--connection-mode", "mesh")
	s.waitAgentsRead(s.env.Clusters, s.env.Clusters...)
}

// waitAgentsRead waits until every agent of the clusters in where reads
// exactly the clusters in reads, each connected and synced.
func (s *scenario) waitAgentsRead(where []*testbed.Cluster, reads ...*testbed.Cluster) {
	s.t.Helper()
	want := clusterNames(reads...)
	for _, c := range where {
		nodes, err := c.AgentNodes(s.ctx)
		s.must(err, "list agents")
		if len(nodes) == 0 {
			s.t.Fatalf("no agent runs in %s", c)
		}
		for _, n := range nodes {
			s.eventually(fmt.Sprintf("agent of %s/%s reads %v, synced", c, n, want), meshTimeout, func() (bool, string) {
				st, err := c.AgentStatus(s.ctx, n)
				if err != nil {
					return false, err.Error()
				}
				var ready []string
				for _, cs := range st.Clusters {
					if cs.Ready && cs.Connected {
						ready = append(ready, cs.Name)
					}
				}
				slices.Sort(ready)
				return slices.Equal(ready, want) && len(st.Clusters) == len(want), agentClusters(st)
			})
		}
	}
}

// agentClusters describes what an agent says of each cluster it reads.
func agentClusters(st *agentv1.StatusResponse) string {
	var parts []string
	for _, c := range st.Clusters {
		p := fmt.Sprintf("%s: %s (connected %t, ready %t)", c.Name, c.State, c.Connected, c.Ready)
		if c.LastError != "" {
			p += " last error: " + c.LastError
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "reads no cluster"
	}
	return strings.Join(parts, "; ")
}

// serviceLine describes one service of an agent's maps.
func serviceLine(svc *agentv1.Service) string {
	var bs []string
	for _, b := range svc.Backends {
		bs = append(bs, fmt.Sprintf("%s:%d (cluster %d, local %t)", b.Address, b.Port, b.ClusterId, b.Local))
	}
	return fmt.Sprintf("%s affinity %s -> %s", svc.Frontend, svc.Affinity, strings.Join(bs, ", "))
}

// serviceBackendClusters returns, for each agent of c, the cluster IDs of
// the backends its maps hold for the frontend vip:port.
func (s *scenario) serviceBackendClusters(c *testbed.Cluster, frontend string) (map[string][]uint32, string) {
	nodes, err := c.AgentNodes(s.ctx)
	if err != nil {
		return nil, err.Error()
	}
	out := map[string][]uint32{}
	var desc []string
	for _, n := range nodes {
		m, err := c.AgentMaps(s.ctx, n)
		if err != nil {
			return nil, err.Error()
		}
		out[n] = []uint32{}
		for _, svc := range m.Services {
			if svc.Frontend != frontend {
				continue
			}
			desc = append(desc, n+": "+serviceLine(svc))
			for _, b := range svc.Backends {
				if !slices.Contains(out[n], b.ClusterId) {
					out[n] = append(out[n], b.ClusterId)
				}
			}
			slices.Sort(out[n])
		}
	}
	return out, strings.Join(desc, "\n")
}

// waitBackendClusters waits until every agent of c serves frontend with
// backends from exactly the clusters want.
func (s *scenario) waitBackendClusters(c *testbed.Cluster, frontend string, want ...*testbed.Cluster) {
	s.t.Helper()
	var ids []uint32
	for _, w := range want {
		ids = append(ids, w.ID)
	}
	slices.Sort(ids)
	s.eventually(fmt.Sprintf("agents of %s to serve %s with backends of clusters %v", c, frontend, clusterNames(want...)), meshTimeout, func() (bool, string) {
		got, desc := s.serviceBackendClusters(c, frontend)
		if got == nil {
			return false, desc
		}
		for _, have := range got {
			if !slices.Equal(have, ids) {
				return false, desc
			}
		}
		return true, desc
	})
}
