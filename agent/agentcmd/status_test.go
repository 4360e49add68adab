package agentcmd

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
)

func TestWriteStatus(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	st := &agentv1.StatusResponse{
		NodeName: "n1", ClusterName: "home", ClusterId: 1, MaxConnectedClusters: 255,
		Started: timestamppb.New(now.Add(-90 * time.Second)), SecretRead: true,
		BpfRoot: "/sys/fs/bpf/isthmus",
		Maps:    []*agentv1.MapStatus{{Name: "isthmus_ipcache", Entries: 131072, MaxEntries: 524288}},
		Clusters: []*agentv1.ClusterStatus{{
			Name: "east", ClusterId: 2, State: "refused", Endpoints: []string{"https://10.0.0.2:2379"},
			LastError:     `refused: duplicate cluster ID: cluster "east" announces cluster ID 2, which cluster "west" already uses`,
			LastErrorTime: timestamppb.New(now.Add(-5 * time.Second)),
			Kinds:         []*agentv1.KindStatus{{Kind: "ipcache", Entries: 0, DecodeErrors: 3}},
		}},
		InvalidEntries: map[string]string{"bad": `clustermesh entry "bad": etcd config lists no endpoints`},
	}
	var b strings.Builder
	if err := WriteStatus(&b, st, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Node n1 in cluster home (ID 1, maxConnectedClusters 255), up 1m30s",
		"initial sync done: no",
		"isthmus_ipcache  131072   524288  25.0%",
		"east (ID 2): refused, connected: no",
		"ipcache  no      0        3",
		`which cluster "west" already uses`,
		"(5s ago)",
		"last change: never",
		`bad: clustermesh entry "bad"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
