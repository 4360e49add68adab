package policystatus

import "github.com/prometheus/client_golang/prometheus"

// metrics are the Controller's Prometheus metrics.
type metrics struct {
	syncs    prometheus.Counter
	writes   *prometheus.CounterVec
	errors   prometheus.Counter
	policies *prometheus.Desc
	count    func() (accepted, invalid int)
}

func newMetrics(reg prometheus.Registerer, count func() (int, int)) *metrics {
	m := &metrics{
		syncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_apiserver_policy_status_checks_total",
			Help: "MeshNetworkPolicy changes checked against their status (most need no write).",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_apiserver_policy_status_writes_total",
			Help: "MeshNetworkPolicy status writes, by the Accepted condition written (accepted, invalid).",
		}, []string{"result"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_apiserver_policy_status_errors_total",
			Help: "MeshNetworkPolicy status writes that failed other than by a conflict (retried).",
		}),
		policies: prometheus.NewDesc("isthmus_apiserver_policies",
			"MeshNetworkPolicies of the cluster whose status describes their current generation, by state (accepted, invalid).",
			[]string{"state"}, nil),
		count: count,
	}
	if reg != nil {
		reg.MustRegister(m.syncs, m.writes, m.errors, m)
	}
	return m
}

// Describe implements prometheus.Collector for the policy counts.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.policies }

// Collect implements prometheus.Collector for the policy counts, read from
// the informer's store at scrape time.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	accepted, invalid := m.count()
	ch <- prometheus.MustNewConstMetric(m.policies, prometheus.GaugeValue, float64(accepted), "accepted")
	ch <- prometheus.MustNewConstMetric(m.policies, prometheus.GaugeValue, float64(invalid), "invalid")
}
