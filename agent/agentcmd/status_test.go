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

func TestWriteStatusDatapath(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	st := &agentv1.StatusResponse{
		NodeName: "n1", ClusterName: "home", ClusterId: 1, MaxConnectedClusters: 255,
		Started: timestamppb.New(now.Add(-time.Minute)),
		Datapath: &agentv1.DatapathStatus{
			SocketLbCgroup: "/sys/fs/cgroup", TunnelPolicyAttached: true,
			Wireguard: &agentv1.WireGuardStatus{
				Device: "isthmus0", Mode: "userspace", PublicKey: "VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI=",
				ListenPort: 51871, Mtu: 1420, Peers: 3, KeptPeers: 1, KeyPublished: true,
				LastReconcile: timestamppb.New(now.Add(-2 * time.Second)),
				Skipped:       []*agentv1.SkippedNode{{Cluster: "east", Node: "e7", Reason: "no-key"}},
			},
		},
		Policy: &agentv1.PolicyStatus{Policies: 3, InvalidPolicies: 1, Identities: 40, NodeIdentities: 2, Entries: 12, EnforcedIdentities: 2, Synced: true},
	}
	var b strings.Builder
	if err := WriteStatus(&b, st, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"socket load balancer: attached to cgroup /sys/fs/cgroup",
		"WireGuard: device isthmus0 (userspace), port 51871, MTU 1420, tunnel policy attached: yes",
		"published on the Node: yes",
		"peers: 3 (1 kept until the mesh is read again), last reconcile:",
		"no peer for east/e7: no-key",
		"MeshNetworkPolicy: 3 policies, 1 of them invalid (an invalid policy allows nothing); maps written: yes, mesh-wide default deny: no",
		"40 identities known, 2 with pods on this node; 12 allow entries, 2 identities in default deny",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	st.Datapath = &agentv1.DatapathStatus{}
	st.Policy = nil
	b.Reset()
	if err := WriteStatus(&b, st, now); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "WireGuard: disabled") || !strings.Contains(out, "socket load balancer: not attached") || !strings.Contains(out, "MeshNetworkPolicy: not enforced") {
		t.Errorf("status without datapath parts:\n%s", out)
	}
}

func TestFlowLine(t *testing.T) {
	at := time.Date(2026, 11, 21, 12, 0, 0, 0, time.Local)
	fl := &agentv1.Flow{
		Time: timestamppb.New(at), Source: "10.1.0.5:40000", Destination: "10.2.0.7:8080", Protocol: "TCP",
		Direction: "ingress", Dropped: true, Reason: "policy-deny", SourceIdentity: 65836, DestinationIdentity: 131372,
		SourceClusterId: 1, DestinationClusterId: 9, RuleId: 7, Lost: 2, Policies: []string{"shop/backend"},
	}
	got := FlowLine(fl, map[uint32]string{1: "west"})
	want := "... 2 flows lost: this stream did not keep up\n" +
		"Nov 21 12:00:00.000 ingress TCP  10.1.0.5:40000 (identity 65836, west) -> 10.2.0.7:8080 (identity 131372, cluster 9) DROPPED policy-deny rule 7 policy shop/backend\n"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
