package remotecluster

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Metrics are the Prometheus metrics of every RemoteCluster of an agent.
// Create them once with NewMetrics and share them; safe for concurrent use.
type Metrics struct {
	state          *prometheus.GaugeVec
	decodeErrors   *prometheus.CounterVec
	connections    *prometheus.CounterVec
	heartbeatDelay *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg (none when
// reg is nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_agent_remote_cluster_state",
			Help: "1 for the state each cluster's reader is in (connecting, refused, syncing, ready, disconnected, stopped), 0 for the others.",
		}, []string{"cluster", "state"}),
		decodeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_agent_remote_decode_errors_total",
			Help: "Remote values skipped because they could not be decoded or failed validation, per cluster and kind.",
		}, []string{"cluster", "kind"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_agent_remote_connections_total",
			Help: "Connections to a cluster's mesh etcd that passed the cluster-config check.",
		}, []string{"cluster"}),
		heartbeatDelay: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_agent_remote_heartbeat_delay_seconds",
			Help: "Local receive time of the latest heartbeat minus the remote time it carries: etcd-to-agent delivery delay plus clock skew.",
		}, []string{"cluster"}),
	}
	if reg != nil {
		reg.MustRegister(m.state, m.decodeErrors, m.connections, m.heartbeatDelay)
	}
	return m
}

// Forget drops every series of cluster, for a cluster that left the mesh.
func (m *Metrics) Forget(cluster string) {
	if m == nil {
		return
	}
	l := prometheus.Labels{"cluster": cluster}
	m.state.DeletePartialMatch(l)
	m.decodeErrors.DeletePartialMatch(l)
	m.connections.DeletePartialMatch(l)
	m.heartbeatDelay.DeletePartialMatch(l)
}

// clusterMetrics are one cluster's series, resolved once.
type clusterMetrics struct {
	state          [len(stateNames)]prometheus.Gauge
	decodeErrors   [numKinds]prometheus.Counter
	connections    prometheus.Counter
	heartbeatDelay prometheus.Gauge
}

func (m *Metrics) forCluster(cluster string) *clusterMetrics {
	if m == nil {
		m = NewMetrics(nil) // unregistered: cheap, keeps call sites simple
	}
	cm := &clusterMetrics{
		connections:    m.connections.WithLabelValues(cluster),
		heartbeatDelay: m.heartbeatDelay.WithLabelValues(cluster),
	}
	for _, s := range States {
		cm.state[s] = m.state.WithLabelValues(cluster, s.String())
	}
	for i, k := range protocol.Kinds {
		cm.decodeErrors[i] = m.decodeErrors.WithLabelValues(cluster, string(k))
	}
	return cm
}

func (cm *clusterMetrics) setState(s State) {
	for i, g := range cm.state {
		if State(i) == s {
			g.Set(1)
		} else {
			g.Set(0)
		}
	}
}
