package netnstest

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link names inside the namespaces. Names are per namespace, so they need
// no random suffix.
const (
	bridgeName = "br0"
	// UplinkName is a node's link to the underlay, and a pod's link to its
	// node.
	UplinkName = "eth0"
	// maxNameLen keeps "n-"+node and "v-"+pod within IFNAMSIZ-1.
	maxNameLen = 13
)

// Pod gateway addresses: a pod's default route goes through these
// link-local addresses, answered by a static neighbour entry for the
// node's end of the veth, so no address on the node side and no ARP or
// NDP is needed.
var (
	podGatewayV4 = netip.MustParseAddr("169.254.1.1")
	podGatewayV6 = netip.MustParseAddr("fe80::1")
)

// UnderlayConfig describes an underlay.
type UnderlayConfig struct {
	// Prefix is the network node IPs are taken from, in order. Its family
	// is the only one the underlay carries: the other is disabled on every
	// underlay link, so a capture sees everything that crosses it. Zero
	// means 192.168.100.0/24.
	Prefix netip.Prefix
	// MTU is the MTU of every underlay link. Zero means 1500.
	MTU int
}

// Underlay is a layer-2 segment, a bridge in its own namespace, joining
// nodes by node IP only. Its methods are safe for concurrent use.
type Underlay struct {
	// NS is the underlay's namespace; capture there to see what crosses.
	NS     *Namespace
	Prefix netip.Prefix
	MTU    int

	mu       sync.Mutex // guards nextHost
	nextHost netip.Addr
}

// NewUnderlay creates an underlay and removes it when the test ends.
func NewUnderlay(tb testing.TB, cfg UnderlayConfig) *Underlay {
	tb.Helper()
	if !cfg.Prefix.IsValid() {
		cfg.Prefix = netip.MustParsePrefix("192.168.100.0/24")
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	u := &Underlay{
		NS:       NewNamespace(tb, "nt-underlay"),
		Prefix:   cfg.Prefix.Masked(),
		MTU:      cfg.MTU,
		nextHost: cfg.Prefix.Masked().Addr().Next(),
	}
	if u.Prefix.Addr().Is4() {
		for _, k := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
			if err := u.NS.Sysctl(k, "1"); err != nil {
				tb.Fatal(err)
			}
		}
	}
	h := u.NS.Netlink(tb)
	// Without multicast snooping the bridge joins no router-discovery
	// group and so sends no IGMP reports of its own: the underlay carries
	// only what the nodes send.
	noSnooping := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName, MTU: cfg.MTU}, MulticastSnooping: &noSnooping}
	if err := h.LinkAdd(br); err != nil {
		tb.Fatalf("underlay: create bridge: %v", err)
	}
	if err := h.LinkSetUp(br); err != nil {
		tb.Fatalf("underlay: set bridge up: %v", err)
	}
	return u
}

func (u *Underlay) allocate() (netip.Addr, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	a := u.nextHost
	if !u.Prefix.Contains(a) || !u.Prefix.Contains(a.Next()) {
		return netip.Addr{}, fmt.Errorf("underlay %s has no free address", u.Prefix)
	}
	u.nextHost = a.Next()
	return a, nil
}

// NodeConfig describes a node.
type NodeConfig struct {
	// Name names the node; at most 13 characters, unique on its underlay.
	Name string
	// Cluster is the cluster the node belongs to; a label for the test.
	Cluster string
	// PodCIDRs are the node's pod CIDRs; AddPod takes addresses from them,
	// one per family, in order. Zero means the node has none: its pods
	// need addresses given to AddPod.
	PodCIDRs []netip.Prefix
}

// Node is a node namespace on an underlay: its UplinkName link holds the
// node IP, it forwards for its pods, and it routes nothing else until
// RouteVia (or the software under test) adds routes. Its methods are safe
// for concurrent use.
type Node struct {
	Name     string
	Cluster  string
	NS       *Namespace
	IP       netip.Addr
	PodCIDRs []netip.Prefix
	Underlay *Underlay

	mu      sync.Mutex // guards nextPod
	nextPod []netip.Addr
}

// AddNode creates a node on the underlay and removes it when the test ends.
func (u *Underlay) AddNode(tb testing.TB, cfg NodeConfig) *Node {
	tb.Helper()
	if cfg.Name == "" || len(cfg.Name) > maxNameLen {
		tb.Fatalf("node name %q: want 1 to %d characters", cfg.Name, maxNameLen)
	}
	ip, err := u.allocate()
	if err != nil {
		tb.Fatalf("node %s: %v", cfg.Name, err)
	}
	n := &Node{
		Name:     cfg.Name,
		Cluster:  cfg.Cluster,
		NS:       NewNamespace(tb, "nt-"+cfg.Name),
		IP:       ip,
		PodCIDRs: cfg.PodCIDRs,
		Underlay: u,
	}
	for _, p := range cfg.PodCIDRs {
		// The first address after the network is left for a gateway.
		n.nextPod = append(n.nextPod, p.Masked().Addr().Next().Next())
	}
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv6.conf.all.forwarding", "1"},
	} {
		if err := n.NS.Sysctl(kv[0], kv[1]); err != nil {
			tb.Fatal(err)
		}
	}
	port := "n-" + cfg.Name
	if err := addVeth(n.NS.Netlink(tb), UplinkName, u.NS, port, u.MTU); err != nil {
		tb.Fatalf("node %s: %v", cfg.Name, err)
	}
	uh := u.NS.Netlink(tb)
	pl, err := uh.LinkByName(port)
	if err == nil {
		err = uh.LinkSetMaster(pl, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}})
	}
	if err == nil {
		err = uh.LinkSetUp(pl)
	}
	if err != nil {
		tb.Fatalf("node %s: attach %s to the underlay bridge: %v", cfg.Name, port, err)
	}
	if ip.Is4() {
		if err := n.NS.Sysctl("net.ipv6.conf."+UplinkName+".disable_ipv6", "1"); err != nil {
			tb.Fatal(err)
		}
	}
	nh := n.NS.Netlink(tb)
	up, err := nh.LinkByName(UplinkName)
	if err == nil {
		a := addr(netip.PrefixFrom(ip, u.Prefix.Bits()))
		if ip.Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		err = nh.AddrAdd(up, a)
	}
	if err == nil {
		err = nh.LinkSetUp(up)
	}
	if err != nil {
		tb.Fatalf("node %s: configure %s: %v", cfg.Name, UplinkName, err)
	}
	return n
}

// RouteVia routes prefixes through another node on the same underlay,
// plainly, without any tunnel: the in-cluster "CNI" of the lab, or the
// baseline a tunnel is measured against. Each prefix must be of the
// underlay's family.
func (n *Node) RouteVia(tb testing.TB, via *Node, prefixes ...netip.Prefix) {
	tb.Helper()
	h := n.NS.Netlink(tb)
	up, err := h.LinkByName(UplinkName)
	if err != nil {
		tb.Fatalf("node %s: %v", n.Name, err)
	}
	for _, p := range prefixes {
		if p.Addr().Is4() != via.IP.Is4() {
			tb.Fatalf("node %s: cannot route %s through %s over a single-family underlay", n.Name, p, via.IP)
		}
		r := &netlink.Route{LinkIndex: up.Attrs().Index, Dst: ipNet(p), Gw: net.IP(via.IP.AsSlice())}
		if err := h.RouteAdd(r); err != nil {
			tb.Fatalf("node %s: route %s via %s: %v", n.Name, p, via.IP, err)
		}
	}
}

// Pod is a pod namespace behind a veth (UplinkName inside the pod,
// HostLink on the node) with /32 and /128 addresses and a default route to
// its node.
type Pod struct {
	Name     string
	Node     *Node
	NS       *Namespace
	IPs      []netip.Addr
	HostLink string
}

// IP returns the pod's first address of the family of v4 (true for IPv4),
// or the zero Addr.
func (p *Pod) IP(v4 bool) netip.Addr {
	for _, a := range p.IPs {
		if a.Is4() == v4 {
			return a
		}
	}
	return netip.Addr{}
}

// AddPod creates a pod on the node and removes it when the test ends. The
// pod gets ips, or, when none are given, the next address of each of the
// node's pod CIDRs. name has at most 13 characters and is unique on the
// node.
func (n *Node) AddPod(tb testing.TB, name string, ips ...netip.Addr) *Pod {
	tb.Helper()
	if name == "" || len(name) > maxNameLen {
		tb.Fatalf("pod name %q: want 1 to %d characters", name, maxNameLen)
	}
	if len(ips) == 0 {
		n.mu.Lock()
		for i, a := range n.nextPod {
			if !n.PodCIDRs[i].Contains(a) {
				n.mu.Unlock()
				tb.Fatalf("node %s: pod CIDR %s is full", n.Name, n.PodCIDRs[i])
			}
			ips = append(ips, a)
			n.nextPod[i] = a.Next()
		}
		n.mu.Unlock()
	}
	if len(ips) == 0 {
		tb.Fatalf("pod %s: node %s has no pod CIDR; give the pod its addresses", name, n.Name)
	}
	p := &Pod{Name: name, Node: n, NS: NewNamespace(tb, "nt-"+n.Name+"-"+name), IPs: ips, HostLink: "v-" + name}
	ph, nh := p.NS.Netlink(tb), n.NS.Netlink(tb)
	if err := addVeth(ph, UplinkName, n.NS, p.HostLink, 0); err != nil {
		tb.Fatalf("pod %s: %v", name, err)
	}
	podLink, err := ph.LinkByName(UplinkName)
	if err != nil {
		tb.Fatalf("pod %s: %v", name, err)
	}
	hostLink, err := nh.LinkByName(p.HostLink)
	if err != nil {
		tb.Fatalf("pod %s: %v", name, err)
	}
	if err := nh.LinkSetUp(hostLink); err != nil {
		tb.Fatalf("pod %s: set %s up: %v", name, p.HostLink, err)
	}
	if err := ph.LinkSetUp(podLink); err != nil {
		tb.Fatalf("pod %s: set %s up: %v", name, UplinkName, err)
	}
	var has4, has6 bool
	for _, ip := range ips {
		a := addr(netip.PrefixFrom(ip, ip.BitLen()))
		if ip.Is6() {
			a.Flags = unix.IFA_F_NODAD
			has6 = true
		} else {
			has4 = true
		}
		if err := ph.AddrAdd(podLink, a); err != nil {
			tb.Fatalf("pod %s: add address %s: %v", name, ip, err)
		}
		// The node reaches the pod by a host route and a static neighbour.
		if err := nh.RouteAdd(&netlink.Route{LinkIndex: hostLink.Attrs().Index, Dst: ipNet(netip.PrefixFrom(ip, ip.BitLen())), Scope: netlink.SCOPE_LINK}); err != nil {
			tb.Fatalf("pod %s: route to %s on node %s: %v", name, ip, n.Name, err)
		}
		if err := nh.NeighAdd(staticNeigh(hostLink.Attrs().Index, ip, podLink.Attrs().HardwareAddr)); err != nil {
			tb.Fatalf("pod %s: neighbour %s on node %s: %v", name, ip, n.Name, err)
		}
	}
	for _, gw := range []struct {
		ok   bool
		addr netip.Addr
	}{{has4, podGatewayV4}, {has6, podGatewayV6}} {
		if !gw.ok {
			continue
		}
		idx := podLink.Attrs().Index
		if err := ph.NeighAdd(staticNeigh(idx, gw.addr, hostLink.Attrs().HardwareAddr)); err != nil {
			tb.Fatalf("pod %s: gateway neighbour %s: %v", name, gw.addr, err)
		}
		if gw.addr.Is4() {
			if err := ph.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: ipNet(netip.PrefixFrom(gw.addr, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
				tb.Fatalf("pod %s: route to gateway: %v", name, err)
			}
		}
		if err := ph.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: net.IP(gw.addr.AsSlice()), Family: family(gw.addr)}); err != nil {
			tb.Fatalf("pod %s: default route via %s: %v", name, gw.addr, err)
		}
	}
	return p
}

// addVeth creates a veth pair in h's namespace, name there and peerName
// in peerNS. A zero mtu keeps the kernel's default.
func addVeth(h *netlink.Handle, name string, peerNS *Namespace, peerName string, mtu int) error {
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name, MTU: mtu},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(int(peerNS.Handle())),
	}
	if mtu != 0 {
		veth.PeerMTU = uint32(mtu)
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s <-> %s (netns %s): %w", name, peerName, peerNS.Name(), err)
	}
	return nil
}

func staticNeigh(linkIndex int, ip netip.Addr, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    linkIndex,
		Family:       family(ip),
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(ip.AsSlice()),
		HardwareAddr: mac,
	}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func addr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
}
