package tunnel

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

const (
	keyA = "VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI="
	keyB = "q2b3svOQLdl8uI/XIa5yLRZ8aBPFQD6/KU9fDTErRho="
	keyC = "YYis/g80DkIb+rFVA+u1GukP/+1y5WpE8dCDs2H7FSQ="
	keyD = "i9Ud3l/gF0CAGpGk+z+SM3hsFGJ6LROmu9/gxoRMHVg="
)

func newState(t *testing.T) *state.State {
	t.Helper()
	s, err := state.New(state.Config{LocalCluster: "home", LocalClusterID: 1, MaxConnectedClusters: 255, NodeName: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func node(cluster string, id uint32, name, key string, ips []string, cidrs ...string) *protocol.Node {
	n := &protocol.Node{Name: name, Cluster: cluster, ClusterID: id, WireguardPubKey: key}
	for _, ip := range ips {
		n.IPAddresses = append(n.IPAddresses, protocol.NodeAddress{Type: protocol.AddressInternalIP, IP: netip.MustParseAddr(ip)})
	}
	for _, c := range cidrs {
		p := netip.MustParsePrefix(c)
		if p.Addr().Is4() {
			n.IPv4AllocCIDR = protocol.NewCIDR(p)
		} else {
			n.IPv6AllocCIDR = protocol.NewCIDR(p)
		}
	}
	return n
}

func pod(ip string, clusterID uint32, host string) *protocol.IPCacheEntry {
	return &protocol.IPCacheEntry{IP: netip.MustParseAddr(ip), ID: protocol.ComposeIdentity(clusterID, 300, 255), HostIP: netip.MustParseAddr(host)}
}

func peerString(peers []wireguard.Peer) string {
	s := ""
	for _, p := range peers {
		s += fmt.Sprintf("%s %s %s %v\n", p.Name, p.PublicKey[:4], p.Endpoint, p.AllowedIPs)
	}
	return s
}

func TestDesiredPeers(t *testing.T) {
	s := newState(t)
	home, c2, c3 := s.Cluster("home"), s.Cluster("c2"), s.Cluster("c3")
	// Nodes of the own cluster never get a peer.
	home.UpsertNode(node("home", 1, "h1", keyA, []string{"172.18.0.1"}, "10.1.0.0/24"))
	home.UpsertNode(node("home", 1, "h2", keyB, []string{"172.18.0.2"}, "10.1.1.0/24"))
	// A dual-stack node with pod CIDRs of both families.
	c2.UpsertNode(node("c2", 2, "a", keyC, []string{"172.18.2.1", "fd00::2:1"}, "10.2.0.0/24", "fd00:2::/64"))
	// Nodes that cannot have a peer.
	c2.UpsertNode(node("c2", 2, "nokey", "", []string{"172.18.2.2"}, "10.2.1.0/24"))
	c2.UpsertNode(node("c2", 2, "noaddr", keyA, nil, "10.2.2.0/24"))
	c2.UpsertNode(node("c2", 2, "nopods", keyB, []string{"172.18.2.4"}))
	// A node without a pod CIDR: its pods' addresses, from its cluster
	// only, become its AllowedIPs.
	c3.UpsertNode(node("c3", 3, "b", keyD, []string{"172.18.3.1"}))
	c3.UpsertIPCache(pod("10.3.0.7", 3, "172.18.3.1"))
	c3.UpsertIPCache(pod("fd00:3::7", 3, "172.18.3.1"))
	c3.UpsertIPCache(pod("10.3.0.9", 3, "172.18.3.9")) // another host
	c2.UpsertIPCache(pod("10.2.9.9", 2, "172.18.3.1")) // another cluster claims that host

	d := DesiredPeers(s, "home", 51871, true)
	// Keys show by their first characters: keyC is YYis, keyD i9Ud.
	want := "c2/a YYis 172.18.2.1:51871 [10.2.0.0/24 fd00:2::/64]\n" +
		"c3/b i9Ud 172.18.3.1:51871 [10.3.0.7/32 fd00:3::7/128]\n"
	if got := peerString(d.Peers); got != want {
		t.Errorf("peers:\n%s\nwant:\n%s", got, want)
	}
	wantSkipped := []SkippedNode{
		{Node: state.NodeName{Cluster: "c2", Name: "noaddr"}, Reason: SkipNoAddress},
		{Node: state.NodeName{Cluster: "c2", Name: "nokey"}, Reason: SkipNoKey},
		{Node: state.NodeName{Cluster: "c2", Name: "nopods"}, Reason: SkipNoAllowedIPs},
	}
	if fmt.Sprint(d.Skipped) != fmt.Sprint(wantSkipped) {
		t.Errorf("skipped = %v, want %v", d.Skipped, wantSkipped)
	}
	if !d.UsesIPCache {
		t.Error("UsesIPCache is false with nodes lacking a pod CIDR")
	}

	// An IPv6 node sends to IPv6 endpoints where there are some.
	d6 := DesiredPeers(s, "home", 51871, false)
	if got := d6.Peers[0].Endpoint.String(); got != "[fd00::2:1]:51871" {
		t.Errorf("IPv6 endpoint of c2/a = %s", got)
	}

	// A pod that arrives changes the AllowedIPs; a cluster that leaves
	// takes its peers along.
	c3.UpsertIPCache(pod("10.3.0.8", 3, "172.18.3.1"))
	c2.DeleteNode("nopods")
	c2.DeleteNode("noaddr")
	c2.DeleteNode("nokey")
	if got := DesiredPeers(s, "home", 51871, true); got.UsesIPCache != true || len(got.Peers[1].AllowedIPs) != 3 {
		t.Errorf("after a new pod: %s", peerString(got.Peers))
	}
	s.RemoveCluster("c3")
	got := DesiredPeers(s, "home", 51871, true)
	if peerString(got.Peers) != "c2/a YYis 172.18.2.1:51871 [10.2.0.0/24 fd00:2::/64]\n" || len(got.Skipped) != 0 || got.UsesIPCache {
		t.Errorf("after c3 left: %s skipped %v usesIPCache %v", peerString(got.Peers), got.Skipped, got.UsesIPCache)
	}
}

func TestKeepCurrent(t *testing.T) {
	wanted := []wireguard.Peer{{Name: "c2/a", PublicKey: keyA, Endpoint: netip.MustParseAddrPort("172.18.2.1:51871"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}}}
	current := []wireguard.PeerStatus{
		// Same key: the wanted version wins.
		{PublicKey: keyA, Endpoint: netip.MustParseAddrPort("172.18.9.9:51871"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}},
		// A peer of a cluster not read yet: kept.
		{PublicKey: keyB, Endpoint: netip.MustParseAddrPort("172.18.3.1:51871"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.3.0.0/24")}},
		// A peer without an endpoint cannot be given again.
		{PublicKey: keyC},
	}
	got := keepCurrent(wanted, current)
	want := "c2/a VRks 172.18.2.1:51871 [10.2.0.0/24]\n" + "kept:" + keyB + " q2b3 172.18.3.1:51871 [10.3.0.0/24]\n"
	if peerString(got) != want {
		t.Errorf("got:\n%s\nwant:\n%s", peerString(got), want)
	}
}
