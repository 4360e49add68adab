package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// stateCollector reports the merged state's counts at scrape time, so
// nothing is updated per change.
type stateCollector struct {
	state   *state.State
	entries *prometheus.Desc
}

func newStateCollector(s *state.State) *stateCollector {
	return &stateCollector{
		state: s,
		entries: prometheus.NewDesc("isthmus_agent_cluster_entries",
			"Valid entries the agent holds from each cluster, per kind (nodes, services, identities, ipcache).",
			[]string{"cluster", "kind"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.entries }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, name := range c.state.ClusterNames() {
		sum, ok := c.state.Summary(name)
		if !ok {
			continue
		}
		for _, k := range protocol.Kinds {
			ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(sum.Entries(k)), name, string(k))
		}
	}
}
