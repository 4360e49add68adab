package protocol

import (
	"net/netip"
	"strings"
	"testing"
)

// The values below are copied from PROTOCOL.md: encoders must produce them
// byte for byte.
const (
	protoClusterConfig = `{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}`
	protoIPCache       = `{"IP":"10.244.1.79","Mask":null,"HostIP":"172.18.0.3","ID":199472,"Key":0,"Metadata":"","K8sNamespace":"foo","K8sPodName":"cep-001"}`
	protoNode          = `{"Name":"test-node-1","Cluster":"cluster3",` +
		`"IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.2"}],` +
		`"IPv4AllocCIDR":{"IP":"10.244.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,` +
		`"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,` +
		`"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"",` +
		`"ClusterID":3,"Source":"custom-resource","EncryptionKey":0,` +
		`"Labels":{"kubernetes.io/hostname":"test-node-1"},"Annotations":null,` +
		`"NodeIdentity":0,"WireguardPubKey":"VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI=","BootID":""}`
	protoService = `{"cluster":"cluster3","namespace":"test","name":"echo",` +
		`"frontends":{"10.96.50.104":{"http":{"Protocol":"TCP","Port":80}}},` +
		`"backends":{"10.244.1.1":{"http":{"Protocol":"TCP","Port":8080}}},` +
		`"hostnames":{},"labels":{},"selector":{"name":"echo"},` +
		`"includeExternal":true,"shared":true,"clusterID":3}`
	protoIdentity = `k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;`
)

func TestEncodeMatchesProtocol(t *testing.T) {
	node := &Node{
		Name:            "test-node-1",
		Cluster:         "cluster3",
		IPAddresses:     []NodeAddress{{Type: AddressInternalIP, IP: netip.MustParseAddr("172.18.0.2")}},
		IPv4AllocCIDR:   NewCIDR(netip.MustParsePrefix("10.244.0.0/24")),
		ClusterID:       3,
		Source:          NodeSourceCustomResource,
		Labels:          map[string]string{"kubernetes.io/hostname": "test-node-1"},
		WireguardPubKey: "VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI=",
	}
	svc := &ClusterService{
		Cluster: "cluster3", Namespace: "test", Name: "echo",
		Frontends:       map[string]PortConfiguration{"10.96.50.104": {"http": {Protocol: ProtoTCP, Port: 80}}},
		Backends:        map[string]PortConfiguration{"10.244.1.1": {"http": {Protocol: ProtoTCP, Port: 8080}}},
		Selector:        map[string]string{"name": "echo"},
		IncludeExternal: true, Shared: true, ClusterID: 3,
	}
	ip := &IPCacheEntry{
		IP: netip.MustParseAddr("10.244.1.79"), HostIP: netip.MustParseAddr("172.18.0.3"),
		ID: 199472, K8sNamespace: "foo", K8sPodName: "cep-001",
	}
	id := Identity{ID: 196915, Labels: K8sLabels(map[string]string{
		"io.kubernetes.pod.namespace": "bar", "app": "baz", "io.cilium.k8s.policy.cluster": "cluster3",
	})}
	for _, tc := range []struct {
		name string
		got  []byte
		want string
	}{
		{"cluster-config", NewClusterConfig(3, 255).Encode(), protoClusterConfig},
		{"node", node.Encode(), protoNode},
		{"service", svc.Encode(), protoService},
		{"ipcache", ip.Encode(), protoIPCache},
		{"identity", id.Encode(), protoIdentity},
	} {
		if string(tc.got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, tc.got, tc.want)
		}
	}
}

func TestDecodeRoundTrip(t *testing.T) {
	n, err := DecodeNode("cluster3", 3, NodeKey("cluster3", "test-node-1"), []byte(protoNode))
	if err != nil {
		t.Fatal(err)
	}
	if got := n.InternalIP(true); got != netip.MustParseAddr("172.18.0.2") {
		t.Errorf("InternalIP = %v", got)
	}
	if got := n.PodCIDRs(); len(got) != 1 || got[0] != netip.MustParsePrefix("10.244.0.0/24") {
		t.Errorf("PodCIDRs = %v", got)
	}
	if string(n.Encode()) != protoNode {
		t.Errorf("node re-encodes as %s", n.Encode())
	}

	s, err := DecodeClusterService("cluster3", 3, ServiceKey("cluster3", "test", "echo"), []byte(protoService))
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Encode()) != protoService {
		t.Errorf("service re-encodes as %s", s.Encode())
	}

	e, err := DecodeIPCacheEntry(3, 255, IPCacheKey(netip.MustParseAddr("10.244.1.79")), []byte(protoIPCache))
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Encode()) != protoIPCache {
		t.Errorf("ipcache re-encodes as %s", e.Encode())
	}
	if e.Prefix() != netip.MustParsePrefix("10.244.1.79/32") {
		t.Errorf("Prefix = %v", e.Prefix())
	}

	id, ok, err := DecodeIdentity("cluster3", 3, 255, "cilium/state/identities/v1/id/196915", []byte(protoIdentity))
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if string(id.Encode()) != protoIdentity {
		t.Errorf("identity re-encodes as %s", id.Encode())
	}

	c, err := DecodeClusterConfig("cluster3", []byte(protoClusterConfig))
	if err != nil || c.ID != 3 || c.Capabilities.MaxConnectedClusters != 255 || !c.Capabilities.SyncedCanaries {
		t.Errorf("cluster config = %+v, %v", c, err)
	}
}

// Values as Cilium 1.18 writes them carry extra fields and omit some; they
// must decode.
func TestDecodeCiliumValues(t *testing.T) {
	node := `{"Name":"test-node-2","Cluster":"cluster3","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.3"},` +
		`{"Type":"InternalIP","IP":"fc00:c111::3"}],"IPv4AllocCIDR":{"IP":"10.244.1.0","Mask":"////AA=="},` +
		`"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":{"IP":"fd00:10:244:1::","Mask":"//////////8AAAAAAAAAAA=="},` +
		`"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"10.244.1.153","IPv6HealthIP":"fd00:10:244:1::835d",` +
		`"IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":3,"Source":"custom-resource","EncryptionKey":7,` +
		`"Labels":{"kubernetes.io/hostname":"test-node-2"},"Annotations":null,"WireguardPubKey":"","BootID":"c1d2"}`
	n, err := DecodeNode("cluster3", 3, "cilium/state/nodes/v1/cluster3/test-node-2", []byte(node))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	if got := n.PodCIDRs(); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("PodCIDRs = %v, want %v", got, want)
	}
	if got := n.InternalIP(false); got != netip.MustParseAddr("fc00:c111::3") {
		t.Errorf("InternalIP(v6) = %v", got)
	}

	ip := `{"IP":"fd00:10:244:2::e024","HostIP":"172.18.0.2","ID":199475,"Key":5,"Metadata":"",` +
		`"K8sNamespace":"bar","K8sPodName":"cep-002","K8sPodUID":"u","K8sServiceAccount":"default",` +
		`"NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"}]}`
	e, err := DecodeIPCacheEntry(3, 255, "cilium/state/ip/v1/default/fd00:10:244:2::e024", []byte(ip))
	if err != nil {
		t.Fatal(err)
	}
	if e.Prefix() != netip.MustParsePrefix("fd00:10:244:2::e024/128") || e.Key != 5 {
		t.Errorf("entry = %+v", e)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		decode func() error
		want   string
	}{
		{"node from another cluster", func() error {
			_, err := DecodeNode("cluster4", 4, NodeKey("cluster4", "test-node-1"), []byte(protoNode))
			return err
		}, "value names cluster"},
		{"node key outside cluster", func() error {
			_, err := DecodeNode("cluster4", 3, NodeKey("cluster3", "test-node-1"), []byte(protoNode))
			return err
		}, "outside cluster"},
		{"node name mismatch", func() error {
			_, err := DecodeNode("cluster3", 3, NodeKey("cluster3", "other"), []byte(protoNode))
			return err
		}, "value names node"},
		{"node bad wireguard key", func() error {
			v := strings.Replace(protoNode, "VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI=", "short", 1)
			_, err := DecodeNode("cluster3", 3, NodeKey("cluster3", "test-node-1"), []byte(v))
			return err
		}, "WireGuard"},
		{"node bad IP", func() error {
			v := strings.Replace(protoNode, "172.18.0.2", "172.18.0.300", 1)
			_, err := DecodeNode("cluster3", 3, NodeKey("cluster3", "test-node-1"), []byte(v))
			return err
		}, "decode node"},
		{"service wrong cluster ID", func() error {
			_, err := DecodeClusterService("cluster3", 4, ServiceKey("cluster3", "test", "echo"), []byte(protoService))
			return err
		}, "cluster ID 3, not 4"},
		{"service bad backend", func() error {
			v := strings.Replace(protoService, "10.244.1.1", "not-an-ip", 1)
			_, err := DecodeClusterService("cluster3", 3, ServiceKey("cluster3", "test", "echo"), []byte(v))
			return err
		}, "not an IP"},
		{"service bad protocol", func() error {
			v := strings.Replace(protoService, `"Protocol":"TCP","Port":8080`, `"Protocol":"XTP","Port":8080`, 1)
			_, err := DecodeClusterService("cluster3", 3, ServiceKey("cluster3", "test", "echo"), []byte(v))
			return err
		}, "protocol"},
		{"ipcache key mismatch", func() error {
			_, err := DecodeIPCacheEntry(3, 255, IPCacheKey(netip.MustParseAddr("10.0.0.1")), []byte(protoIPCache))
			return err
		}, "does not match the key"},
		{"ipcache foreign identity", func() error {
			_, err := DecodeIPCacheEntry(4, 255, IPCacheKey(netip.MustParseAddr("10.244.1.79")), []byte(protoIPCache))
			return err
		}, "carries cluster ID 3"},
		{"ipcache reserved identity", func() error {
			v := strings.Replace(protoIPCache, "199472", "2", 1)
			_, err := DecodeIPCacheEntry(3, 255, IPCacheKey(netip.MustParseAddr("10.244.1.79")), []byte(v))
			return err
		}, "reserved"},
		{"ipcache not JSON", func() error {
			_, err := DecodeIPCacheEntry(3, 255, IPCacheKey(netip.MustParseAddr("10.244.1.79")), []byte("{"))
			return err
		}, "decode ipcache"},
		{"identity cluster label", func() error {
			_, _, err := DecodeIdentity("cluster4", 3, 255, "cilium/state/identities/v1/id/196915", []byte(protoIdentity))
			return err
		}, "does not match cluster"},
		{"identity no labels", func() error {
			_, _, err := DecodeIdentity("cluster3", 3, 255, "cilium/state/identities/v1/id/196915", []byte(";;"))
			return err
		}, "no labels"},
		{"identity bad key", func() error {
			_, _, err := DecodeIdentity("cluster3", 3, 255, "cilium/state/identities/v1/id/x", []byte(protoIdentity))
			return err
		}, "not a numeric identity"},
		{"cluster config bad id", func() error {
			_, err := DecodeClusterConfig("c", []byte(`{"id":0}`))
			return err
		}, "out of range"},
		{"cluster config bad max", func() error {
			_, err := DecodeClusterConfig("c", []byte(`{"id":3,"capabilities":{"maxConnectedClusters":300}}`))
			return err
		}, "maxConnectedClusters is 300"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.decode()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestIdentityKeyIgnoresAllocatorKeys(t *testing.T) {
	_, ok, err := DecodeIdentity("c", 3, 255, "cilium/state/identities/v1/value/k8s:app=x;/node1", []byte("199472"))
	if ok || err != nil {
		t.Fatalf("ok=%v err=%v; want an ignored key", ok, err)
	}
}

func TestClusterValidation(t *testing.T) {
	for name, ok := range map[string]bool{
		"cluster1": true, "a": true, "a-b": true, strings.Repeat("a", 32): true,
		"": false, strings.Repeat("a", 33): false, "-a": false, "a-": false, "A": false, "a_b": false, "a.b": false,
	} {
		if err := ValidateClusterName(name); (err == nil) != ok {
			t.Errorf("ValidateClusterName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
	for _, tc := range []struct {
		id, max uint32
		ok      bool
	}{{1, 255, true}, {255, 255, true}, {256, 255, false}, {0, 255, false}, {511, 511, true}, {512, 511, false}, {3, 300, false}} {
		if err := ValidateClusterID(tc.id, tc.max); (err == nil) != tc.ok {
			t.Errorf("ValidateClusterID(%d, %d) = %v, want ok=%v", tc.id, tc.max, err, tc.ok)
		}
	}
}

func TestComposeIdentity(t *testing.T) {
	id := ComposeIdentity(3, 256, 255)
	if id != 3<<16|256 || id.ClusterID(255) != 3 || id.LocalPart(255) != 256 {
		t.Errorf("255: %d cluster %d local %d", id, id.ClusterID(255), id.LocalPart(255))
	}
	id = ComposeIdentity(511, 300, 511)
	if id != 511<<15|300 || id.ClusterID(511) != 511 || id.LocalPart(511) != 300 || id > MaxNumericIdentity {
		t.Errorf("511: %d cluster %d local %d", id, id.ClusterID(511), id.LocalPart(511))
	}
	if err := ValidateIdentityCluster(ComposeIdentity(3, 100, 255), 3, 255); err == nil {
		t.Error("local part below 256 accepted")
	}
}

func TestPodSecurityLabels(t *testing.T) {
	got := PodSecurityLabels("c1", "shop", "", map[string]string{
		"app":                                    "web",
		"app.kubernetes.io/name":                 "web",
		"pod-template-hash":                      "abc",
		"controller-revision-hash":               "1",
		"statefulset.kubernetes.io/pod-name":     "web-0",
		"apps.kubernetes.io/pod-index":           "0",
		"batch.kubernetes.io/job-name":           "j",
		"io.kubernetes.pod.namespace":            "spoofed",
		"kubernetes.io/hostname":                 "n",
		"k8s.io/x":                               "y",
		"failure-domain.beta.kubernetes.io/zone": "z",
	}, map[string]string{"team": "a", "kubernetes.io/metadata.name": "shop"})
	want := "k8s:app=web;k8s:app.kubernetes.io/name=web;" +
		"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop;" +
		"k8s:io.cilium.k8s.namespace.labels.team=a;" +
		"k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.cilium.k8s.policy.serviceaccount=default;" +
		"k8s:io.kubernetes.pod.namespace=shop;"
	if got.String() != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	parsed, err := ParseLabels(got.String())
	if err != nil || !parsed.Equal(got) {
		t.Errorf("ParseLabels round trip = %v, %v", parsed, err)
	}
}

func TestKeys(t *testing.T) {
	if got := SyncedKey("cluster3", KindIPCache); got != "cilium/synced/cluster3/cilium/state/ip/v1" {
		t.Error(got)
	}
	if got := SyncedKey("cluster3", KindServices); got != "cilium/synced/cluster3/cilium/state/services/v1" {
		t.Error(got)
	}
	c, ns, n, err := ParseServiceKey("cilium/state/services/v1/c/ns/name")
	if err != nil || c != "c" || ns != "ns" || n != "name" {
		t.Error(c, ns, n, err)
	}
	for _, bad := range []string{"cilium/state/services/v1/c/ns", "cilium/state/services/v1/c/ns/a/b", "x/c/ns/n", "cilium/state/services/v1//ns/n"} {
		if _, _, _, err := ParseServiceKey(bad); err == nil {
			t.Errorf("ParseServiceKey(%q) accepted", bad)
		}
	}
	if _, _, err := ParseNodeKey("cilium/state/nodes/v1/c/n/x"); err == nil {
		t.Error("node key with extra part accepted")
	}
	if WatchPrefix("c", KindNodes) != "cilium/state/nodes/v1/c/" || WatchPrefix("c", KindIPCache) != IPCachePrefix {
		t.Error("WatchPrefix")
	}
}
