package meshops

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// AgentReport is what one node agent reports about the mesh: the status of
// its MeshAgent object.
type AgentReport struct {
	Node    string
	Cluster string
	// Heartbeat is when the agent last wrote its report.
	Heartbeat time.Time
	Clusters  []AgentClusterReport
}

// AgentClusterReport is an agent's connection to one cluster.
type AgentClusterReport struct {
	Name      string
	ClusterID uint32
	Local     bool
	Connected bool
	Ready     bool
	// Entries counts the entries the agent holds, by kind.
	Entries KindCounts
	// LastError is the agent's latest error with this cluster, kept after
	// it recovers.
	LastError     string
	LastErrorTime time.Time
}

// KindCounts counts mesh state entries by kind.
type KindCounts struct {
	Nodes      int64 `json:"nodes"`
	Services   int64 `json:"services"`
	Identities int64 `json:"identities"`
	IPCache    int64 `json:"ipcache"`
}

// DefaultStaleAfter is how old an agent's report may be before the agent
// is taken for gone.
const DefaultStaleAfter = 3 * time.Minute

// StatusInput is everything status is computed from.
type StatusInput struct {
	// Context names the cluster, for hints.
	Context string
	// Config is the cluster's isthmus-config; nil when it has none.
	Config *MeshConfig
	// ConfigError says why the ConfigMap could not be used.
	ConfigError error
	// Entries and EntryErrors are the parsed clustermesh Secret.
	Entries     map[string]meshconfig.ClusterEntry
	EntryErrors []error
	// Readers are the clusters granted read access to this one.
	Readers []string
	// Nodes is the number of Nodes; -1 when unknown.
	Nodes  int
	Agents []AgentReport
	// Now and StaleAfter decide which reports are too old. Zero
	// StaleAfter means DefaultStaleAfter.
	Now        time.Time
	StaleAfter time.Duration
}

// StatusReport is a cluster's mesh status: what is configured, and what
// its agents report about each cluster.
type StatusReport struct {
	Context string      `json:"context"`
	Enabled bool        `json:"enabled"`
	Config  *MeshConfig `json:"config,omitempty"`
	// ReadableBy lists the clusters granted read access to this one.
	ReadableBy []string `json:"readableBy"`
	// Nodes is the number of Nodes, -1 when unknown; AgentsReporting
	// counts agents with a fresh report, StaleAgents names the nodes whose
	// agent's report is too old.
	Nodes           int      `json:"nodes"`
	AgentsReporting int      `json:"agentsReporting"`
	StaleAgents     []string `json:"staleAgents,omitempty"`
	// Clusters has one entry per cluster configured or reported, sorted by
	// name, this cluster first.
	Clusters []ClusterStatus `json:"clusters"`
	// Problems are those not about one remote cluster.
	Problems []Problem `json:"problems,omitempty"`
	// Ready: enabled, at least one agent reporting and none stale, and
	// every configured cluster connected and synced on every agent, and
	// nothing reported that is not configured.
	Ready bool `json:"ready"`
}

// ClusterStatus is the status of one cluster as this cluster's agents see
// it.
type ClusterStatus struct {
	Name string `json:"name"`
	// Local marks this cluster's own entry.
	Local bool `json:"local,omitempty"`
	// Configured: the clustermesh Secret has an entry for it. A cluster
	// reported but not configured is being withdrawn.
	Configured bool     `json:"configured"`
	Endpoints  []string `json:"endpoints,omitempty"`
	// CertExpiry is when the entry's client certificate expires.
	CertExpiry *time.Time `json:"certExpiry,omitempty"`
	// ClusterID is the ID the agents read from its cluster config.
	ClusterID uint32 `json:"clusterID,omitempty"`
	// Agents counts the reporting agents; Connected and Synced how many
	// of them hold a connection to it and have its complete state.
	Agents    int `json:"agents"`
	Connected int `json:"connected"`
	Synced    int `json:"synced"`
	// Entries are the largest counts any agent holds.
	Entries  KindCounts `json:"entries"`
	Problems []Problem  `json:"problems,omitempty"`
	// Warnings do not keep the cluster from being ready, e.g. a
	// certificate due for renewal.
	Warnings []Problem `json:"warnings,omitempty"`
	Ready    bool      `json:"ready"`
}

// Problem is an error with what to do about it.
type Problem struct {
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
	// Nodes are the nodes whose agents report it, when it comes from
	// agents.
	Nodes []string `json:"nodes,omitempty"`
}

// Aggregate computes the status report of in. It is pure: the same input
// gives the same report.
func Aggregate(in StatusInput) *StatusReport {
	r := &StatusReport{Context: in.Context, Nodes: in.Nodes, ReadableBy: slices.Sorted(slices.Values(in.Readers))}
	if r.ReadableBy == nil {
		r.ReadableBy = []string{}
	}
	if in.Config == nil {
		msg := fmt.Sprintf("context %q is not enabled for the mesh", in.Context)
		if in.ConfigError != nil {
			msg = in.ConfigError.Error()
		}
		r.Problems = append(r.Problems, Problem{Message: msg, Hint: fmt.Sprintf("run `isthmus enable --context %s --cluster-name <name> --cluster-id <id>`", in.Context)})
		return r
	}
	r.Enabled = true
	cfg := *in.Config
	r.Config = &cfg
	self := cfg.ClusterName
	staleAfter := in.StaleAfter
	if staleAfter <= 0 {
		staleAfter = DefaultStaleAfter
	}

	for _, err := range in.EntryErrors {
		r.Problems = append(r.Problems, Problem{Message: err.Error(), Hint: fmt.Sprintf("re-run `isthmus connect --context %s` with that cluster's context to rewrite the entry", in.Context)})
	}

	// Live agents of this cluster.
	var live []AgentReport
	for _, a := range slices.SortedFunc(slices.Values(in.Agents), func(a, b AgentReport) int { return strings.Compare(a.Node, b.Node) }) {
		switch {
		case a.Cluster != "" && a.Cluster != self:
			r.Problems = append(r.Problems, Problem{
				Message: fmt.Sprintf("the agent on node %s runs as cluster %q, but this cluster is %q", a.Node, a.Cluster, self),
				Hint:    "the agent's --cluster-name must match the cluster's isthmus-config; reinstall the agent with the right values",
				Nodes:   []string{a.Node},
			})
		case in.Now.Sub(a.Heartbeat) > staleAfter:
			r.StaleAgents = append(r.StaleAgents, a.Node)
		default:
			live = append(live, a)
		}
	}
	r.AgentsReporting = len(live)
	if len(r.StaleAgents) > 0 {
		r.Problems = append(r.Problems, Problem{
			Message: fmt.Sprintf("%d agent(s) have not reported for more than %s", len(r.StaleAgents), staleAfter),
			Hint:    "check the isthmus-agent pods on those nodes (kubectl -n isthmus-system get pods -o wide); a node that is gone leaves its MeshAgent behind until it is deleted",
			Nodes:   r.StaleAgents,
		})
	}
	if len(live) == 0 {
		hint := "is the isthmus-agent DaemonSet installed and running? (kubectl -n isthmus-system get daemonset,pods)"
		r.Problems = append(r.Problems, Problem{Message: "no agent reports its status", Hint: hint})
	}

	names := map[string]bool{}
	for n := range in.Entries {
		names[n] = true
	}
	// Each cluster's reports, in node order: one pass over all reports,
	// so a mesh of hundreds of clusters and nodes aggregates in linear
	// time.
	reports := map[string][]nodeReport{}
	liveNodes := make([]string, len(live))
	for i, a := range live {
		liveNodes[i] = a.Node
		for _, c := range a.Clusters {
			names[c.Name] = true
			reports[c.Name] = append(reports[c.Name], nodeReport{node: a.Node, AgentClusterReport: c})
		}
	}
	if _, ok := in.Entries[self]; !ok {
		msg := fmt.Sprintf("the clustermesh Secret has no entry for %q itself, so the agents cannot read this cluster's own state", self)
		hint := fmt.Sprintf("run `isthmus enable --context %s --cluster-name %s --cluster-id %d --mesh-endpoint https://<address>:<port>`", in.Context, self, cfg.ClusterID)
		if len(cfg.MeshEndpoints) > 0 {
			hint = fmt.Sprintf("re-run `isthmus enable --context %s --cluster-name %s --cluster-id %d`", in.Context, self, cfg.ClusterID)
		}
		r.Problems = append(r.Problems, Problem{Message: msg, Hint: hint})
	}
	order := slices.Sorted(maps.Keys(names))
	slices.SortStableFunc(order, func(a, b string) int {
		switch {
		case a == self:
			return -1
		case b == self:
			return 1
		}
		return 0
	})
	ready := len(live) > 0 && len(r.StaleAgents) == 0 && len(r.Problems) == 0
	for _, name := range order {
		cs := clusterStatus(in, name, liveNodes, reports[name])
		ready = ready && cs.Ready
		r.Clusters = append(r.Clusters, cs)
	}
	r.Ready = ready
	return r
}

// nodeReport is one agent's report on one cluster.
type nodeReport struct {
	node string
	AgentClusterReport
}

// clusterStatus aggregates the reports on cluster name of the agents on
// liveNodes.
func clusterStatus(in StatusInput, name string, liveNodes []string, reports []nodeReport) ClusterStatus {
	self := in.Config.ClusterName
	cs := ClusterStatus{Name: name, Local: name == self, Agents: len(liveNodes)}
	if cs.Local {
		cs.ClusterID = in.Config.ClusterID
	}
	if e, ok := in.Entries[name]; ok {
		cs.Configured = true
		cs.Endpoints = e.Endpoints
		if cert, err := certs.ParseCertificate(e.Cert); err == nil {
			exp := cert.NotAfter.UTC()
			cs.CertExpiry = &exp
			if needsRenewal(cert, in.Now) {
				fix := fmt.Sprintf("re-run `isthmus connect --context %s --destination-context <context of %s>`", in.Context, name)
				if cs.Local {
					fix = fmt.Sprintf("re-run `isthmus enable --context %s` with the cluster's name and ID", in.Context)
				}
				cs.Warnings = append(cs.Warnings, Problem{Message: fmt.Sprintf("the client certificate expires %s", exp.Format(time.RFC3339)), Hint: fix + " to renew it"})
			}
		}
	}
	// Group agents' errors by message.
	errs := map[string][]string{}
	reporting := make(map[string]bool, len(reports))
	for _, c := range reports {
		reporting[c.node] = true
		if c.ClusterID != 0 {
			cs.ClusterID = c.ClusterID
		}
		if c.Connected {
			cs.Connected++
		}
		if c.Ready {
			cs.Synced++
		}
		cs.Entries.Nodes = max(cs.Entries.Nodes, c.Entries.Nodes)
		cs.Entries.Services = max(cs.Entries.Services, c.Entries.Services)
		cs.Entries.Identities = max(cs.Entries.Identities, c.Entries.Identities)
		cs.Entries.IPCache = max(cs.Entries.IPCache, c.Entries.IPCache)
		if !c.Ready && c.LastError != "" {
			errs[c.LastError] = append(errs[c.LastError], c.node)
		}
	}
	var missing []string
	if cs.Configured {
		for _, n := range liveNodes {
			if !reporting[n] {
				missing = append(missing, n)
			}
		}
	}
	if !cs.Configured {
		cs.Problems = append(cs.Problems, Problem{
			Message: "agents still hold this cluster though the clustermesh Secret has no entry for it (being withdrawn)",
			Hint:    "agents withdraw a removed cluster within moments of seeing the Secret change; if it persists, check the agents' logs",
			Nodes:   slices.Sorted(maps.Keys(reporting)),
		})
	}
	if len(missing) > 0 {
		cs.Problems = append(cs.Problems, Problem{
			Message: "agents do not report this cluster yet",
			Hint:    "agents pick up a new entry when the kubelet refreshes the mounted Secret (up to a minute or two); if it persists, check the agents' logs",
			Nodes:   missing,
		})
	}
	for _, msg := range slices.Sorted(maps.Keys(errs)) {
		cs.Problems = append(cs.Problems, Problem{Message: msg, Hint: HintFor(msg, in.Context, self, name), Nodes: errs[msg]})
	}
	if cs.Configured && cs.Synced < cs.Agents && len(errs) == 0 && len(missing) == 0 {
		cs.Problems = append(cs.Problems, Problem{Message: fmt.Sprintf("%d of %d agents are still connecting or syncing", cs.Agents-cs.Synced, cs.Agents)})
	}
	cs.Ready = cs.Configured && cs.Agents > 0 && cs.Synced == cs.Agents && len(cs.Problems) == 0
	return cs
}

// NotReadyReasons lists, one line each, why r is not ready.
func (r *StatusReport) NotReadyReasons() []string {
	var out []string
	for _, p := range r.Problems {
		out = append(out, p.Message)
	}
	for _, c := range r.Clusters {
		if c.Ready {
			continue
		}
		if len(c.Problems) == 0 && c.Agents > 0 {
			out = append(out, fmt.Sprintf("%s: %d of %d agents synced", c.Name, c.Synced, c.Agents))
		}
		for _, p := range c.Problems {
			out = append(out, fmt.Sprintf("%s: %s", c.Name, p.Message))
		}
	}
	return out
}
