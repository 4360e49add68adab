package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

// statusSummary is one line saying how far the cluster is.
func statusSummary(r *meshops.StatusReport) string {
	if !r.Enabled {
		return "not enabled"
	}
	parts := []string{}
	for _, c := range r.Clusters {
		parts = append(parts, fmt.Sprintf("%s %d/%d synced", c.Name, c.Synced, c.Agents))
	}
	state := "ready"
	if !r.Ready {
		state = "waiting"
		if n := len(r.NotReadyReasons()); n > 0 {
			parts = append(parts, fmt.Sprintf("%d problem(s)", n))
		}
	}
	if len(parts) == 0 {
		return state
	}
	return state + ": " + strings.Join(parts, ", ")
}

// renderStatusText writes the report for people.
func renderStatusText(w io.Writer, r *meshops.StatusReport) error {
	var b strings.Builder
	if !r.Enabled {
		fmt.Fprintf(&b, "Context %q: not enabled for the mesh.\n", r.Context)
		writeProblems(&b, "", r.Problems)
		_, err := io.WriteString(w, b.String())
		return err
	}
	cfg := r.Config
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Cluster:\t%s (ID %d, max-connected-clusters %d), context %s\n", cfg.ClusterName, cfg.ClusterID, cfg.MaxConnectedClusters, r.Context)
	fmt.Fprintf(tw, "Mesh endpoints:\t%s\n", orNone(strings.Join(cfg.MeshEndpoints, ", ")))
	nodes := ""
	if r.Nodes >= 0 {
		nodes = fmt.Sprintf(" on %d node(s)", r.Nodes)
	}
	stale := ""
	if len(r.StaleAgents) > 0 {
		stale = fmt.Sprintf(", %d silent", len(r.StaleAgents))
	}
	fmt.Fprintf(tw, "Agents:\t%d reporting%s%s\n", r.AgentsReporting, stale, nodes)
	fmt.Fprintf(tw, "Readable by:\t%s\n", orNone(strings.Join(r.ReadableBy, ", ")))
	tw.Flush()

	if len(r.Clusters) > 0 {
		b.WriteString("\n")
		tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CLUSTER\tID\tCONFIGURED\tCONNECTED\tSYNCED\tNODES\tSERVICES\tIDENTITIES\tIPS\tCERT EXPIRES")
		for _, c := range r.Clusters {
			name := c.Name
			if c.Local {
				name += " (this)"
			}
			id := "-"
			if c.ClusterID != 0 {
				id = fmt.Sprint(c.ClusterID)
			}
			exp := "-"
			if c.CertExpiry != nil {
				exp = c.CertExpiry.Format(time.DateOnly)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d/%d\t%d\t%d\t%d\t%d\t%s\n", name, id, yesNo(c.Configured),
				c.Connected, c.Agents, c.Synced, c.Agents,
				c.Entries.Nodes, c.Entries.Services, c.Entries.Identities, c.Entries.IPCache, exp)
		}
		tw.Flush()
	}
	writeProblems(&b, "", r.Problems)
	for _, c := range r.Clusters {
		writeProblems(&b, c.Name, c.Problems)
	}
	for _, c := range r.Clusters {
		for _, p := range c.Warnings {
			fmt.Fprintf(&b, "\nWarning: %s: %s\n", c.Name, p.Message)
			if p.Hint != "" {
				fmt.Fprintf(&b, "  hint: %s\n", p.Hint)
			}
		}
	}
	if r.Ready {
		b.WriteString("\nReady: every configured cluster is connected and synced on every agent.\n")
	} else {
		fmt.Fprintf(&b, "\nNot ready: %d reason(s) above.\n", len(r.NotReadyReasons()))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeProblems(b *strings.Builder, cluster string, ps []meshops.Problem) {
	for _, p := range ps {
		b.WriteString("\n")
		if cluster != "" {
			fmt.Fprintf(b, "%s: ", cluster)
		}
		b.WriteString(p.Message)
		if len(p.Nodes) > 0 {
			fmt.Fprintf(b, " (%s)", nodeList(p.Nodes))
		}
		b.WriteString("\n")
		if p.Hint != "" {
			fmt.Fprintf(b, "  hint: %s\n", p.Hint)
		}
	}
}

// nodeList names up to three nodes and counts the rest.
func nodeList(nodes []string) string {
	const show = 3
	word := "node"
	if len(nodes) > 1 {
		word = "nodes"
	}
	if len(nodes) <= show {
		return word + " " + strings.Join(nodes, ", ")
	}
	return fmt.Sprintf("%s %s and %d more", word, strings.Join(nodes[:show], ", "), len(nodes)-show)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
