package meshpolicy

import (
	"github.com/prometheus/client_golang/prometheus"

	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
)

// metrics are the Reconciler's Prometheus metrics. The counts (policies,
// identities, entries) are read from the compiler at scrape time by
// collect, so nothing is updated per change.
type metrics struct {
	compile      *prometheus.HistogramVec
	sync         *prometheus.HistogramVec
	writeErrors  prometheus.Counter
	revisions    prometheus.Counter
	policies     *prometheus.Desc
	identities   *prometheus.Desc
	entries      *prometheus.Desc
	maxEntries   *prometheus.Desc
	compileOf    map[string]prometheus.Observer
	incremental  prometheus.Observer
	full         prometheus.Observer
	collectStats func() (statsSnapshot, bool)
}

// statsSnapshot is what collect reports.
type statsSnapshot struct {
	policies, invalid         int
	identities, nodeIdents    int
	entries, enforced         int
	maxEntries, maxEnforcment uint32
}

// Compile event labels.
const (
	compilePolicy     = "policy"
	compileIdentities = "identities"
	compileNode       = "node"
)

func newMetrics(reg prometheus.Registerer, stats func() (statsSnapshot, bool)) *metrics {
	m := &metrics{
		compile: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "isthmus_agent_policy_compile_seconds",
			Help: "Time the policy compiler took to absorb a change: one MeshNetworkPolicy added, updated or deleted (event=policy), a batch of identity changes from the mesh (identities), or a batch of changes to the identities with pods on this node (node).",
			// 10µs .. ~10s
			Buckets: prometheus.ExponentialBuckets(0.00001, 2.5, 16),
		}, []string{"event"}),
		sync: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "isthmus_agent_policy_sync_seconds",
			Help:    "Duration of writing the compiled policy into the policy and enforcement maps, per pass (incremental: the changes since the last pass; full: the whole desired state against the maps).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"pass"}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_policy_write_errors_total",
			Help: "Passes that failed to write some policy or enforcement entries; a full reconcile follows.",
		}),
		revisions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_policy_revision_bumps_total",
			Help: "Policy revision bumps: each makes the tunnel program check every tracked flow once more against the current policy.",
		}),
		policies: prometheus.NewDesc("isthmus_agent_policies",
			"MeshNetworkPolicies of the local cluster the agent compiles, by state: accepted, or invalid (allowing nothing, failing closed; see the policy's Accepted condition).",
			[]string{"state"}, nil),
		identities: prometheus.NewDesc("isthmus_agent_policy_identities",
			"Identities the policy compiler knows, of every cluster (scope=mesh), and those with pods on this node (scope=node), the only ones policy map entries are written for.",
			[]string{"scope"}, nil),
		entries: prometheus.NewDesc("isthmus_agent_policy_map_entries",
			"Entries the compiled policy puts into each map: isthmus_policy (allow entries) and isthmus_pol_enf (identities in default deny).",
			[]string{"map"}, nil),
		maxEntries: prometheus.NewDesc("isthmus_agent_policy_map_max_entries",
			"Capacity of each policy map; raise --policy-max-entries or --policy-enforcement-max-entries before the entries reach it.",
			[]string{"map"}, nil),
		collectStats: stats,
	}
	m.compileOf = map[string]prometheus.Observer{
		compilePolicy:     m.compile.WithLabelValues(compilePolicy),
		compileIdentities: m.compile.WithLabelValues(compileIdentities),
		compileNode:       m.compile.WithLabelValues(compileNode),
	}
	m.incremental = m.sync.WithLabelValues("incremental")
	m.full = m.sync.WithLabelValues("full")
	if reg != nil {
		reg.MustRegister(m.compile, m.sync, m.writeErrors, m.revisions, m)
	}
	return m
}

// Describe implements prometheus.Collector for the scrape-time counts.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.policies
	ch <- m.identities
	ch <- m.entries
	ch <- m.maxEntries
}

// Collect implements prometheus.Collector for the scrape-time counts.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	st, ok := m.collectStats()
	if !ok {
		return
	}
	gauge := func(d *prometheus.Desc, v int, label string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), label)
	}
	gauge(m.policies, st.policies-st.invalid, "accepted")
	gauge(m.policies, st.invalid, "invalid")
	gauge(m.identities, st.identities, "mesh")
	gauge(m.identities, st.nodeIdents, "node")
	gauge(m.entries, st.entries, dpmaps.NamePolicy)
	gauge(m.entries, st.enforced, dpmaps.NameEnforcement)
	gauge(m.maxEntries, int(st.maxEntries), dpmaps.NamePolicy)
	gauge(m.maxEntries, int(st.maxEnforcment), dpmaps.NameEnforcement)
}
