package testbed

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

func node(cluster string, id uint32, name, ip string) *protocol.Node {
	return &protocol.Node{Name: name, Cluster: cluster, ClusterID: id, IPAddresses: []protocol.NodeAddress{{Type: "InternalIP", IP: netip.MustParseAddr(ip)}}}
}

func pod(ip, host string, id protocol.NumericIdentity) *protocol.IPCacheEntry {
	return &protocol.IPCacheEntry{IP: netip.MustParseAddr(ip), HostIP: netip.MustParseAddr(host), ID: id}
}

func echoExport(cluster string, id uint32, shared bool, backends ...string) *protocol.ClusterService {
	s := &protocol.ClusterService{Cluster: cluster, ClusterID: id, Namespace: "ns", Name: "echo", Shared: shared, Backends: map[string]protocol.PortConfiguration{}}
	for _, b := range backends {
		s.Backends[b] = protocol.PortConfiguration{"http": {Protocol: "TCP", Port: 8080}}
	}
	return s
}

// twoClusters is a small mesh: east (ID 1, where the agent runs on e1)
// and west (ID 2), each with a pod of the echo service.
func twoClusters() (LocalView, []*ClusterExport) {
	east := &ClusterExport{
		Cluster: "east", ClusterID: 1,
		Nodes:      []*protocol.Node{node("east", 1, "e1", "192.0.2.1"), node("east", 1, "e2", "192.0.2.2")},
		IPCache:    []*protocol.IPCacheEntry{pod("10.1.1.5", "192.0.2.1", 1<<16|256), pod("10.1.2.5", "192.0.2.2", 1<<16|256)},
		Identities: []protocol.Identity{{ID: 1<<16 | 256, Labels: protocol.NewLabels(protocol.Label{Source: "k8s", Key: "app", Value: "echo"})}},
		Services:   []*protocol.ClusterService{echoExport("east", 1, true, "10.1.1.5")},
	}
	west := &ClusterExport{
		Cluster: "west", ClusterID: 2,
		Nodes:      []*protocol.Node{node("west", 2, "w1", "192.0.2.9")},
		IPCache:    []*protocol.IPCacheEntry{pod("10.2.1.7", "192.0.2.9", 2<<16|300)},
		Identities: []protocol.Identity{{ID: 2<<16 | 300, Labels: protocol.NewLabels(protocol.Label{Source: "k8s", Key: "app", Value: "echo"})}},
		Services:   []*protocol.ClusterService{echoExport("west", 2, true, "10.2.1.7")},
	}
	svc := corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "echo", Annotations: map[string]string{
			meshconfig.ServiceGlobalAnnotation: "true", meshconfig.ServiceAffinityAnnotation: "local",
		}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP},
			{Name: "sctp", Port: 90, Protocol: corev1.ProtocolSCTP},
		}},
	}
	local := LocalView{ClusterName: "east", ClusterID: 1, MaxConnectedClusters: 255, Node: "e1", Services: []corev1.Service{svc}}
	return local, []*ClusterExport{east, west}
}

func TestExpectedMaps(t *testing.T) {
	local, exports := twoClusters()
	m := ExpectedMaps(local, exports)

	got := ipcacheLines(m)
	slices.Sort(got)
	want := []string{
		`10.1.1.5/32 identity 65792 tunnel "192.0.2.1" cluster 1 flags 1`, // a pod on this node
		`10.1.2.5/32 identity 65792 tunnel "192.0.2.2" cluster 1 flags 0`,
		`10.2.1.7/32 identity 131372 tunnel "192.0.2.9" cluster 2 flags 0`,
		`192.0.2.1/32 identity 1 tunnel "192.0.2.1" cluster 1 flags 3`, // this node: host
		`192.0.2.2/32 identity 6 tunnel "192.0.2.2" cluster 1 flags 2`, // remote-node
		`192.0.2.9/32 identity 6 tunnel "192.0.2.9" cluster 2 flags 2`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("ipcache:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ids := identityLines(m); len(ids) != 2 || ids[1] != "131372 of west: k8s:app=echo" {
		t.Errorf("identities: %q", ids)
	}
	// SCTP is not served by the socket LB; both clusters' backends are.
	if svcs := serviceLines(m); len(svcs) != 1 || svcs[0] != "10.96.0.10:80/TCP affinity local backends [10.1.1.5:8080@1/local=true 10.2.1.7:8080@2/local=false]" {
		t.Errorf("services: %q", svcs)
	}
}

func TestExpectedMapsUnsharedService(t *testing.T) {
	local, exports := twoClusters()
	local.Services[0].Annotations[meshconfig.ServiceSharedAnnotation] = "false"
	// The local export is gone once unshared; its backends come from the
	// EndpointSlices, ready ones only.
	exports[0].Services = nil
	local.EndpointSlices = []discoveryv1.EndpointSlice{{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "echo-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.1.1.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"10.1.2.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
		},
	}}
	svcs := serviceLines(ExpectedMaps(local, exports))
	if len(svcs) != 1 || svcs[0] != "10.96.0.10:80/TCP affinity local backends [10.1.1.5:8080@1/local=true 10.2.1.7:8080@2/local=false]" {
		t.Errorf("services: %q", svcs)
	}
}

func TestDiffMaps(t *testing.T) {
	local, exports := twoClusters()
	want := ExpectedMaps(local, exports)
	if d := DiffMaps(want, ExpectedMaps(local, exports)); len(d) != 0 {
		t.Fatalf("equal maps differ: %q", d)
	}
	got := ExpectedMaps(local, exports)
	got.IPCache = got.IPCache[1:]                                                   // one entry missing
	got.Identities = append(got.Identities, &agentv1.Identity{Id: 9, Cluster: "x"}) // one too many
	got.Services[0].Backends[0].Port = 9090                                         // one changed
	d := DiffMaps(want, got)
	wantDiff := []string{
		`missing ipcache 10.1.1.5/32 identity 65792 tunnel "192.0.2.1" cluster 1 flags 1`,
		"unexpected identity 9 of x: ",
		"missing service 10.96.0.10:80/TCP affinity local backends [10.1.1.5:8080@1/local=true 10.2.1.7:8080@2/local=false]",
		"unexpected service 10.96.0.10:80/TCP affinity local backends [10.1.1.5:9090@1/local=true 10.2.1.7:8080@2/local=false]",
	}
	if !slices.Equal(d, wantDiff) {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(d, "\n"), strings.Join(wantDiff, "\n"))
	}
}
