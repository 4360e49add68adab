package reconcilers

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the reconcilers' Prometheus metrics. Create them once with
// NewMetrics; safe for concurrent use.
type Metrics struct {
	entries      *prometheus.GaugeVec
	maxEntries   *prometheus.GaugeVec
	pressure     *prometheus.GaugeVec
	writeErrors  *prometheus.CounterVec
	propagation  *prometheus.HistogramVec
	passDuration *prometheus.HistogramVec
}

// NewMetrics creates the metrics and registers them with reg (none when
// reg is nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_agent_map_entries",
			Help: "Entries the agent has programmed into each BPF map.",
		}, []string{"map"}),
		maxEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_agent_map_max_entries",
			Help: "Capacity (max entries) of each BPF map.",
		}, []string{"map"}),
		pressure: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_agent_map_pressure",
			Help: "Fill ratio of each BPF map: entries / max entries. Raise the map's size flag before it reaches 1.",
		}, []string{"map"}),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_agent_map_write_errors_total",
			Help: "Reconcile passes that failed to write some entries into a map (they are retried).",
		}, []string{"map"}),
		propagation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "isthmus_agent_propagation_seconds",
			Help: "Time from the agent receiving a change (a remote etcd event decoded into the merged state, or a local Kubernetes event) to the change being written into the BPF map. Add isthmus_agent_remote_heartbeat_delay_seconds for the remote etcd-to-agent leg.",
			// 1ms .. ~16s
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"map"}),
		passDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "isthmus_agent_reconcile_duration_seconds",
			Help:    "Duration of reconcile passes per map and pass (incremental: changed keys only; full: the whole map against the merged state).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"map", "pass"}),
	}
	if reg != nil {
		reg.MustRegister(m.entries, m.maxEntries, m.pressure, m.writeErrors, m.propagation, m.passDuration)
	}
	return m
}

// mapMetrics are one map's series, resolved once.
type mapMetrics struct {
	entries, maxEntries, pressure prometheus.Gauge
	writeErrors                   prometheus.Counter
	propagation                   prometheus.Observer
	incremental, full             prometheus.Observer
	max                           float64
}

func (m *Metrics) forMap(name string, max uint32) *mapMetrics {
	if m == nil {
		m = NewMetrics(nil)
	}
	mm := &mapMetrics{
		entries:     m.entries.WithLabelValues(name),
		maxEntries:  m.maxEntries.WithLabelValues(name),
		pressure:    m.pressure.WithLabelValues(name),
		writeErrors: m.writeErrors.WithLabelValues(name),
		propagation: m.propagation.WithLabelValues(name),
		incremental: m.passDuration.WithLabelValues(name, "incremental"),
		full:        m.passDuration.WithLabelValues(name, "full"),
		max:         float64(max),
	}
	mm.maxEntries.Set(mm.max)
	return mm
}

func (mm *mapMetrics) setEntries(n int) {
	mm.entries.Set(float64(n))
	if mm.max > 0 {
		mm.pressure.Set(float64(n) / mm.max)
	}
}

func (mm *mapMetrics) observePass(full bool, started time.Time) {
	o := mm.incremental
	if full {
		o = mm.full
	}
	o.Observe(time.Since(started).Seconds())
}
