package kvstore

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the Writer's measurements; the apiserver registers them.
type Metrics struct {
	// Lag observes, per committed key, the seconds from the change being
	// observed to its commit.
	Lag prometheus.Observer
	// TxnDuration observes the seconds each transaction took.
	TxnDuration prometheus.Observer
	// Writes counts committed key changes (puts and deletes).
	Writes prometheus.Counter
	// WriteErrors counts failed transactions.
	WriteErrors prometheus.Counter
	// Keys is the number of keys held under each counted prefix, by label.
	Keys *prometheus.GaugeVec
}
