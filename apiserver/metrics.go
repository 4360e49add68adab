package apiserver

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/isthmus-mesh/isthmus/apiserver/exporter"
	"github.com/isthmus-mesh/isthmus/apiserver/kvstore"
)

const metricsNamespace = "isthmus_apiserver"

// metrics are the apiserver's Prometheus metrics, on a registry of its own.
type metrics struct {
	registry *prometheus.Registry

	lag            prometheus.Histogram
	txnDuration    prometheus.Histogram
	writes         prometheus.Counter
	writeErrors    prometheus.Counter
	keys           *prometheus.GaugeVec
	badAnnotations *prometheus.CounterVec
	ready          prometheus.Gauge
	initialExport  prometheus.Gauge
	heartbeat      prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "export_lag_seconds",
			Help:    "Time from a Kubernetes change being observed to its etcd write committing.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		txnDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "etcd_txn_duration_seconds",
			Help:    "Duration of each batched etcd write transaction.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "etcd_writes_total",
			Help: "Keys put or deleted in etcd.",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "etcd_write_errors_total",
			Help: "Failed etcd write transactions (retried).",
		}),
		keys: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "keys",
			Help: "Keys held in etcd per exported prefix.",
		}, []string{"prefix"}),
		badAnnotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "bad_annotations_total",
			Help: "Annotation values that could not be used (a default applied), by annotation.",
		}, []string{"annotation"}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "ready",
			Help: "1 once the initial export is complete and the synced canaries are written.",
		}),
		initialExport: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "initial_export_seconds",
			Help: "Time from start of the exporter to the synced canaries being written.",
		}),
		heartbeat: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "heartbeat_timestamp_seconds",
			Help: "Unix time of the last heartbeat written.",
		}),
	}
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.lag, m.txnDuration, m.writes, m.writeErrors, m.keys, m.badAnnotations,
		m.ready, m.initialExport, m.heartbeat,
	)
	return m
}

func (m *metrics) writer() kvstore.Metrics {
	return kvstore.Metrics{Lag: m.lag, TxnDuration: m.txnDuration, Writes: m.writes, WriteErrors: m.writeErrors, Keys: m.keys}
}

func (m *metrics) exporter() exporter.Metrics {
	return exporter.Metrics{BadAnnotations: m.badAnnotations}
}
