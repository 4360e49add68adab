package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

func sampleReport() *meshops.StatusReport {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	ready := func(name string, id uint32) meshops.AgentClusterReport {
		return meshops.AgentClusterReport{Name: name, ClusterID: id, Connected: true, Ready: true, Entries: meshops.KindCounts{Nodes: 3, Services: 2, Identities: 9, IPCache: 12}}
	}
	bad := meshops.AgentClusterReport{Name: "west", LastError: "x509: certificate signed by unknown authority"}
	agent := func(node string, cs ...meshops.AgentClusterReport) meshops.AgentReport {
		return meshops.AgentReport{Node: node, Cluster: "east", Heartbeat: now, Clusters: cs}
	}
	return meshops.Aggregate(meshops.StatusInput{
		Context: "kind-east",
		Config:  &meshops.MeshConfig{ClusterName: "east", ClusterID: 1, MaxConnectedClusters: 255, MeshEndpoints: []string{"https://10.0.0.1:2379"}},
		Entries: map[string]meshconfig.ClusterEntry{"east": {Cluster: "east"}, "west": {Cluster: "west"}},
		Readers: []string{"west"},
		Nodes:   4,
		Now:     now,
		Agents: []meshops.AgentReport{
			agent("n1", ready("east", 1), ready("west", 2)),
			agent("n2", ready("east", 1), bad),
			agent("n3", ready("east", 1), bad),
			agent("n4", ready("east", 1), bad),
			agent("n5", ready("east", 1), bad),
		},
	})
}

func TestRenderStatusText(t *testing.T) {
	var b bytes.Buffer
	if err := renderStatusText(&b, sampleReport()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Cluster:         east (ID 1, max-connected-clusters 255), context kind-east",
		"Mesh endpoints:  https://10.0.0.1:2379",
		"Agents:          5 reporting on 4 node(s)",
		"Readable by:     west",
		"CLUSTER      ID  CONFIGURED  CONNECTED  SYNCED",
		"east (this)  1   yes         5/5        5/5     3      2         9           12",
		"west         2   yes         1/5        1/5",
		"west: x509: certificate signed by unknown authority (nodes n2, n3, n4 and 1 more)",
		"  hint: west answers with a certificate its clustermesh entry does not trust",
		"Not ready: 1 reason(s) above.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := statusSummary(sampleReport()); got != "waiting: east 5/5 synced, west 1/5 synced, 1 problem(s)" {
		t.Errorf("summary = %q", got)
	}

	b.Reset()
	notEnabled := meshops.Aggregate(meshops.StatusInput{Context: "kind-x"})
	if err := renderStatusText(&b, notEnabled); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, `Context "kind-x": not enabled for the mesh.`) || !strings.Contains(out, "hint: run `isthmus enable --context kind-x") {
		t.Errorf("not enabled:\n%s", out)
	}
}

func TestRenderStatusMachineReadable(t *testing.T) {
	for _, format := range []string{"json", "yaml"} {
		render, err := statusRenderer(format)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := render(&b, sampleReport()); err != nil {
			t.Fatal(err)
		}
		data := b.Bytes()
		if format == "yaml" {
			if data, err = yaml.YAMLToJSON(data); err != nil {
				t.Fatal(err)
			}
		}
		var back meshops.StatusReport
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		if back.Ready || len(back.Clusters) != 2 || back.Clusters[1].Synced != 1 || back.Clusters[1].Problems[0].Hint == "" {
			t.Errorf("%s round trip: %+v", format, back)
		}
	}
	if _, err := statusRenderer("table"); err == nil || !strings.Contains(err.Error(), `"table"`) {
		t.Errorf("unknown format: %v", err)
	}
}
