package exporter

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// The expected values are PROTOCOL.md's examples.

func TestConvertNodeMatchesProtocol(t *testing.T) {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        "test-node-1",
			Labels:      map[string]string{"kubernetes.io/hostname": "test-node-1"},
			Annotations: map[string]string{meshconfig.NodeWireGuardPubKeyAnnotation: "VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI="},
		},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.0.0/24", PodCIDRs: []string{"10.244.0.0/24"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "172.18.0.2"},
			{Type: corev1.NodeHostName, Address: "test-node-1"},
		}},
	}
	n, bad := ConvertNode("cluster3", 3, node)
	if bad != nil {
		t.Fatal(bad)
	}
	want := `{"Name":"test-node-1","Cluster":"cluster3",` +
		`"IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.2"}],` +
		`"IPv4AllocCIDR":{"IP":"10.244.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,` +
		`"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,` +
		`"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"",` +
		`"ClusterID":3,"Source":"custom-resource","EncryptionKey":0,` +
		`"Labels":{"kubernetes.io/hostname":"test-node-1"},"Annotations":null,` +
		`"NodeIdentity":0,"WireguardPubKey":"VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI=","BootID":""}`
	if got := string(n.Encode()); got != want {
		t.Errorf("node:\n got %s\nwant %s", got, want)
	}
}

func TestConvertNodeDualStackAndBadKey(t *testing.T) {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        "n1",
			Annotations: map[string]string{meshconfig.NodeWireGuardPubKeyAnnotation: "not-a-key"},
		},
		Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64", "10.245.1.0/24"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "172.18.0.3"},
			{Type: corev1.NodeInternalIP, Address: "fc00::3"},
			{Type: corev1.NodeExternalIP, Address: "203.0.113.3"},
		}},
	}
	n, bad := ConvertNode("c1", 1, node)
	if bad == nil || bad.Annotation != meshconfig.NodeWireGuardPubKeyAnnotation || bad.Value != "not-a-key" {
		t.Fatalf("bad key problem = %+v", bad)
	}
	if n.WireguardPubKey != "" {
		t.Errorf("invalid key exported: %q", n.WireguardPubKey)
	}
	got := n.PodCIDRs()
	if len(got) != 3 || got[0].String() != "10.244.1.0/24" || got[1].String() != "fd00:10:244:1::/64" || got[2].String() != "10.245.1.0/24" {
		t.Errorf("pod CIDRs %v", got)
	}
	if len(n.IPv4SecondaryAllocCIDRs) != 1 {
		t.Errorf("secondary v4 CIDRs %v", n.IPv4SecondaryAllocCIDRs)
	}
	if len(n.IPAddresses) != 3 || n.InternalIP(false).String() != "fc00::3" {
		t.Errorf("addresses %v", n.IPAddresses)
	}
	// What it exports, a reader accepts.
	if _, err := protocol.DecodeNode("c1", 1, protocol.NodeKey("c1", "n1"), n.Encode()); err != nil {
		t.Errorf("exported node does not decode: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func echoService() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "test", Annotations: map[string]string{
			meshconfig.CiliumServiceGlobalAnnotation: "true",
			meshconfig.CiliumServiceSharedAnnotation: "true",
		}},
		Spec: corev1.ServiceSpec{
			ClusterIP:  "10.96.50.104",
			ClusterIPs: []string{"10.96.50.104"},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
			Selector:   map[string]string{"name": "echo"},
		},
	}
}

func echoSlice() *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-kvlm2", Namespace: "test", Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}},
			{Addresses: []string{"10.244.1.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
}

func TestConvertServiceMatchesProtocol(t *testing.T) {
	cs := ConvertService("cluster3", 3, echoService(), []*discoveryv1.EndpointSlice{echoSlice()})
	want := `{"cluster":"cluster3","namespace":"test","name":"echo",` +
		`"frontends":{"10.96.50.104":{"http":{"Protocol":"TCP","Port":80}}},` +
		`"backends":{"10.244.1.1":{"http":{"Protocol":"TCP","Port":8080}}},` +
		`"hostnames":{},"labels":{},"selector":{"name":"echo"},` +
		`"includeExternal":true,"shared":true,"clusterID":3}`
	if got := string(cs.Encode()); got != want {
		t.Errorf("service:\n got %s\nwant %s", got, want)
	}
}

func TestConvertServicePortsAndSlices(t *testing.T) {
	svc := echoService()
	svc.Spec.ClusterIPs = []string{"10.96.50.104", "fd00:96::104"}
	svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	a := echoSlice()
	a.Ports = append(a.Ports,
		discoveryv1.EndpointPort{Name: ptr("dns"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolUDP)},
		discoveryv1.EndpointPort{Name: ptr("metrics"), Port: ptr(int32(9090))}, // not a Service port
	)
	b := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-v6", Namespace: "test"},
		AddressType: discoveryv1.AddressTypeIPv6,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"fd00:10:244:1::5"}, Hostname: ptr("echo-0")}, // ready unset means ready
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8081))}},
	}
	fqdn := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeFQDN, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"example.com"}}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(80))}}}
	cs := ConvertService("c1", 1, svc, []*discoveryv1.EndpointSlice{a, b, fqdn})
	if len(cs.Frontends) != 2 || cs.Frontends["fd00:96::104"]["dns"].Protocol != protocol.ProtoUDP {
		t.Errorf("frontends %s", cs.Encode())
	}
	v4 := cs.Backends["10.244.1.1"]
	if len(v4) != 2 || v4["http"].Port != 8080 || v4["dns"].Port != 5353 || v4["dns"].Protocol != protocol.ProtoUDP {
		t.Errorf("v4 backend %s", cs.Encode())
	}
	if v6 := cs.Backends["fd00:10:244:1::5"]; len(v6) != 1 || v6["http"].Port != 8081 {
		t.Errorf("v6 backend %s", cs.Encode())
	}
	if len(cs.Backends) != 2 {
		t.Errorf("backends %s (not-ready and FQDN endpoints must be left out)", cs.Encode())
	}
	if cs.Hostnames["fd00:10:244:1::5"] != "echo-0" {
		t.Errorf("hostnames %v", cs.Hostnames)
	}
	if _, err := protocol.DecodeClusterService("c1", 1, protocol.ServiceKey("c1", "test", "echo"), cs.Encode()); err != nil {
		t.Errorf("exported service does not decode: %v", err)
	}

	// Unnamed port.
	svc = echoService()
	svc.Spec.Ports[0].Name = ""
	sl := echoSlice()
	sl.Ports[0].Name = ptr("")
	if got := string(ConvertService("c1", 1, svc, []*discoveryv1.EndpointSlice{sl}).Encode()); !strings.Contains(got, `"backends":{"10.244.1.1":{"":{"Protocol":"TCP","Port":8080}}}`) {
		t.Errorf("unnamed port: %s", got)
	}
}

func TestPodIPCacheEntries(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "cep-001", Namespace: "foo"},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status: corev1.PodStatus{
			Phase:  corev1.PodRunning,
			HostIP: "172.18.0.99",
			PodIP:  "10.244.1.79",
			PodIPs: []corev1.PodIP{{IP: "10.244.1.79"}, {IP: "fd00:10:244:1::79"}},
		},
	}
	node := &corev1.Node{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "172.18.0.3"},
	}}}
	entries := PodIPCacheEntries(pod, node, 199472)
	if len(entries) != 2 {
		t.Fatalf("%d entries", len(entries))
	}
	want := `{"IP":"10.244.1.79","Mask":null,"HostIP":"172.18.0.3","ID":199472,"Key":0,"Metadata":"","K8sNamespace":"foo","K8sPodName":"cep-001"}`
	if got := string(entries[0].Encode()); got != want {
		t.Errorf("ipcache:\n got %s\nwant %s", got, want)
	}
	// No IPv6 InternalIP: the IPv4 one carries the IPv6 pod IP too.
	if got := entries[1].HostIP.String(); entries[1].IP.String() != "fd00:10:244:1::79" || got != "172.18.0.3" {
		t.Errorf("v6 entry %+v", entries[1])
	}
	// Without the Node, the pod's reported host IP.
	if got := PodIPCacheEntries(pod, nil, 199472)[0].HostIP.String(); got != "172.18.0.99" {
		t.Errorf("host IP without node = %s", got)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*corev1.Pod)
	}{
		{"pending", func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }},
		{"succeeded", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }},
		{"host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }},
		{"no IP", func(p *corev1.Pod) { p.Status.PodIP = ""; p.Status.PodIPs = nil }},
	} {
		p := pod.DeepCopy()
		tc.mutate(p)
		if podExported(p) {
			t.Errorf("%s pod exported", tc.name)
		}
	}
	if !podExported(pod) {
		t.Error("running pod not exported")
	}
}
