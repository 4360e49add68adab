package topology

import (
	"net/netip"
	"strings"
	"testing"
)

func TestDefaultLab(t *testing.T) {
	l, err := New(Config{}, 7)
	if err != nil {
		t.Fatal(err)
	}
	if l.Name != "isthmus" || len(l.Clusters) != 2 || len(l.Nodes()) != 4 {
		t.Fatalf("lab = %s with %d clusters, %d nodes", l.Name, len(l.Clusters), len(l.Nodes()))
	}
	if got := l.Underlay.String(); got != "10.250.7.0/24" {
		t.Errorf("underlay = %s", got)
	}
	c2 := l.Clusters[1]
	if c2.Name != "isthmus-c2" || c2.ID != 2 || c2.APIAddr.String() != "10.250.7.12" || c2.PodCIDR.String() != "10.2.0.0/16" {
		t.Errorf("cluster 2 = %+v", c2)
	}
	if c2.KubeAPIURL() != "https://10.250.7.12:6443" || c2.MeshEndpoint() != "https://10.250.7.12:2379" {
		t.Errorf("URLs %s %s", c2.KubeAPIURL(), c2.MeshEndpoint())
	}
	n := c2.Nodes[1]
	if n.Name != "isthmus-c2-n2" || n.IP.String() != "10.250.7.103" || n.PodCIDR.String() != "10.2.2.0/24" {
		t.Errorf("node = %+v", n)
	}
	if n.Netns != "isl.isthmus.isthmus-c2-n2" || n.Cgroup != "isthmus-lab/isthmus/isthmus-c2-n2" || n.BPFDir != "isthmus-lab/isthmus/isthmus-c2-n2" {
		t.Errorf("node names = %+v", n)
	}
	if !l.ServiceCIDR.Contains(netip.MustParseAddr("10.96.50.104")) || !netip.MustParsePrefix("10.96.0.0/12").Overlaps(l.ServiceCIDR) {
		t.Errorf("service CIDR %s", l.ServiceCIDR)
	}
}

func TestNamesStayUniqueAndShort(t *testing.T) {
	seen := map[string]string{}
	for _, name := range []string{"isthmus", "a", "a-c1", "e2e-0123456789abcdefghi"} {
		l, err := New(Config{Name: name, Clusters: 12, NodesPerCluster: 12}, 0)
		if err != nil {
			t.Fatal(err)
		}
		check := func(what, s string) {
			t.Helper()
			if len(s) > 15 {
				t.Errorf("%s %q is longer than 15 characters", what, s)
			}
			if prev, dup := seen[s]; dup {
				t.Errorf("%s %q of lab %s repeats %s", what, s, name, prev)
			}
			seen[s] = name
		}
		check("host link", l.HostLink)
		pods := map[netip.Prefix]bool{}
		for _, n := range l.Nodes() {
			check("wireguard device", n.WireGuardDevice)
			if len(n.BridgePort) > 15 {
				t.Errorf("bridge port %q too long", n.BridgePort)
			}
			if !strings.HasPrefix(n.Netns, NetnsPrefix(name)) || !strings.HasPrefix(n.PodNetns("x"), NetnsPrefix(name)) {
				t.Errorf("namespace %q outside lab prefix", n.Netns)
			}
			if pods[n.PodCIDR] || !l.Underlay.Contains(n.IP) {
				t.Errorf("node %s: %s %s", n.Name, n.PodCIDR, n.IP)
			}
			pods[n.PodCIDR] = true
			if len(n.Cluster) > 32 {
				t.Errorf("cluster name %q too long for the mesh", n.Cluster)
			}
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Name: "Bad_Name"}, "lower-case"},
		{Config{Name: strings.Repeat("a", 25)}, "at most 24"},
		{Config{Clusters: -1}, "--clusters"},
		{Config{Clusters: 65}, "--clusters"},
		{Config{NodesPerCluster: 100}, "--nodes"},
		{Config{Clusters: 20, NodesPerCluster: 20}, "at most 150"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want it to mention %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := New(Config{}, 256); err == nil {
		t.Error("slot 256 accepted")
	}
}
