package tunnel

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the tunnel's Prometheus metrics. Nil is valid and records
// nothing. Safe for concurrent use.
type Metrics struct {
	peers       prometheus.Gauge
	skipped     *prometheus.GaugeVec
	reconciles  *prometheus.CounterVec
	recreations prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_wireguard_peers",
			Help: "WireGuard peers the device was last given: one per node of the other clusters, plus those kept from before the agent's first complete view of the mesh.",
		}),
		skipped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_agent_wireguard_skipped_nodes",
			Help: "Nodes of other clusters without a WireGuard peer, by reason: no-key (no public key published), no-address (no InternalIP), no-allowed-ips (no pod CIDR and no pod), refused (the device refused the peer).",
		}, []string{"reason"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_agent_wireguard_reconciles_total",
			Help: "Reconciles of the WireGuard peers and routes, by result (ok, error; failed ones are retried).",
		}, []string{"result"}),
		recreations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_wireguard_device_recreations_total",
			Help: "Times the WireGuard device was found gone and created again.",
		}),
	}
	for _, r := range SkipReasons {
		m.skipped.WithLabelValues(string(r))
	}
	for _, r := range []string{"ok", "error"} {
		m.reconciles.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.peers, m.skipped, m.reconciles, m.recreations)
	}
	return m
}

func (m *Metrics) observe(st Status, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.reconciles.WithLabelValues("error").Inc()
		return
	}
	m.reconciles.WithLabelValues("ok").Inc()
	m.peers.Set(float64(st.Peers))
	counts := map[SkipReason]int{}
	for _, s := range st.Skipped {
		counts[s.Reason]++
	}
	for _, r := range SkipReasons {
		m.skipped.WithLabelValues(string(r)).Set(float64(counts[r]))
	}
}

func (m *Metrics) recreated() {
	if m != nil {
		m.recreations.Inc()
	}
}
