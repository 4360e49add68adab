package flows

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
)

// Metrics are the hub's Prometheus metrics. Nil is valid and records
// nothing. Safe for concurrent use.
type Metrics struct {
	events, decodeErrors, drops prometheus.Counter
	subs                        prometheus.Gauge
}

// NewMetrics creates the hub's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_flow_events_total",
			Help: "Flow events (new flows and drops on the tunnel device) read from the datapath's ring buffer.",
		}),
		decodeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_flow_event_decode_errors_total",
			Help: "Flow event records that could not be decoded and were skipped.",
		}),
		drops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_flow_subscriber_drops_total",
			Help: "Flow events not delivered to a subscriber (a Flows stream) that did not keep up.",
		}),
		subs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_flow_subscribers",
			Help: "Open flow subscriptions (Flows streams of the local API).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.events, m.decodeErrors, m.drops, m.subs)
	}
	return m
}

func (m *Metrics) event() {
	if m != nil {
		m.events.Inc()
	}
}

func (m *Metrics) decodeError() {
	if m != nil {
		m.decodeErrors.Inc()
	}
}

func (m *Metrics) subscriberDrop() {
	if m != nil {
		m.drops.Inc()
	}
}

func (m *Metrics) subscribers(n int) {
	if m != nil {
		m.subs.Set(float64(n))
	}
}

// CounterCollector exports the tunnel policy programs' counters, read
// from the pinned metrics map at scrape time: packets and bytes per
// reason and verdict, and flow events lost to a full ring buffer. The
// counters are pinned with the maps, so they go on across agent
// restarts.
type CounterCollector struct {
	read                 func() (map[tunnelpolicy.Reason]tunnelpolicy.Counter, error)
	packets, bytes, lost *prometheus.Desc
	errors               prometheus.Counter
}

// NewCounterCollector returns a collector of the counters read returns
// (tunnelpolicy.ReadCounters of the node's maps).
func NewCounterCollector(read func() (map[tunnelpolicy.Reason]tunnelpolicy.Counter, error)) *CounterCollector {
	return &CounterCollector{
		read: read,
		packets: prometheus.NewDesc("isthmus_agent_tunnel_packets_total",
			"Packets the tunnel policy programs judged on the WireGuard device, by reason and verdict (passed, dropped). Dropped reasons: policy-deny, policy-no-match, default-deny, malformed.",
			[]string{"reason", "verdict"}, nil),
		bytes: prometheus.NewDesc("isthmus_agent_tunnel_bytes_total",
			"Bytes of the packets counted in isthmus_agent_tunnel_packets_total.",
			[]string{"reason", "verdict"}, nil),
		lost: prometheus.NewDesc("isthmus_agent_flow_events_lost_total",
			"Flow events the datapath could not queue because the ring buffer was full (raise --flow-ring-bytes).",
			nil, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_tunnel_counter_read_errors_total",
			Help: "Scrapes that could not read the tunnel policy counters.",
		}),
	}
}

// Describe implements prometheus.Collector.
func (c *CounterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.lost
	c.errors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *CounterCollector) Collect(ch chan<- prometheus.Metric) {
	defer c.errors.Collect(ch)
	counters, err := c.read()
	if err != nil {
		c.errors.Inc()
		return
	}
	var lost uint64
	for r, v := range counters {
		if r == tunnelpolicy.ReasonEventsLost {
			lost = v.Packets
			continue
		}
		verdict := "passed"
		if r.Dropped() {
			verdict = "dropped"
		}
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(v.Packets), r.String(), verdict)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(v.Bytes), r.String(), verdict)
	}
	ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(lost))
}
