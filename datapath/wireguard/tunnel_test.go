package wireguard_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
	"github.com/isthmus-mesh/isthmus/internal/netnstest"
)

// TestTunnelBetweenClusters joins two nodes of two clusters that reach
// each other only by node IP, and checks that pods on them talk through
// WireGuard and only through it.
func TestTunnelBetweenClusters(t *testing.T) {
	netnstest.Require(t)
	requireTools(t, "wg")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// An underlay MTU below the usual shows that the tunnel's MTU follows
	// the device that routes to the peer.
	u := netnstest.NewUnderlay(t, netnstest.UnderlayConfig{Prefix: netip.MustParsePrefix("192.168.77.0/24"), MTU: 1400})
	a := u.AddNode(t, netnstest.NodeConfig{Name: "a", Cluster: "c1",
		PodCIDRs: mustPrefixes("10.1.0.0/24", "fd00:1::/64")})
	// b has no pod CIDR: its peer entry lists its pods' addresses.
	b := u.AddNode(t, netnstest.NodeConfig{Name: "b", Cluster: "c2"})
	podA := a.AddPod(t, "pa")
	podB := b.AddPod(t, "pb", netip.MustParseAddr("10.2.0.7"), netip.MustParseAddr("fd00:2::7"))

	wa := startWGNode(ctx, t, a.NS, wireguard.Config{})
	wb := startWGNode(ctx, t, b.NS, wireguard.Config{})
	t.Logf("devices: a %s (%s), b %s (%s)", wa.Name, wa.Mode, wb.Name, wb.Mode)
	if wa.ListenPort != wireguard.DefaultListenPort {
		t.Errorf("listen port = %d, want the default %d", wa.ListenPort, wireguard.DefaultListenPort)
	}
	peerA := wireguard.Peer{Name: "c1/a", PublicKey: wa.PublicKey,
		Endpoint: netip.AddrPortFrom(a.IP, wireguard.DefaultListenPort), AllowedIPs: a.PodCIDRs}
	peerB := wireguard.Peer{Name: "c2/b", PublicKey: wb.PublicKey,
		Endpoint: netip.AddrPortFrom(b.IP, wireguard.DefaultListenPort), AllowedIPs: mustPrefixes("10.2.0.7/32", "fd00:2::7/128")}

	// Before the peers are set, nothing crosses.
	port := podB.ServeEcho(t, 0)
	addrB4 := netip.AddrPortFrom(podB.IP(true), uint16(port)).String()
	if _, err := netnstest.Exchange(ctx, podA.NS, addrB4, 1); err == nil {
		t.Fatal("pod a reached pod b before any WireGuard peer was set")
	}

	if s := wa.setPeers(ctx, t, peerB); len(s) != 0 {
		t.Fatalf("skipped: %v", s)
	}
	if s := wb.setPeers(ctx, t, peerA); len(s) != 0 {
		t.Fatalf("skipped: %v", s)
	}
	checkRoutes(t, a.NS, wa.Name, peerB.AllowedIPs)
	checkRoutes(t, b.NS, wb.Name, peerA.AllowedIPs)
	for _, n := range []*wgNode{wa, wb} {
		const want = 1400 - 60
		if got := linkMTU(t, n.ns, n.Name); got != want {
			t.Errorf("%s: MTU = %d, want %d (underlay 1400 less 60 for IPv4)", n.Name, got, want)
		}
	}

	// Pod traffic both ways, both families, while the underlay is watched.
	capture, err := u.NS.Capture()
	if err != nil {
		t.Fatal(err)
	}
	portA := podA.ServeEcho(t, 0)
	for _, c := range []struct {
		from *netnstest.Pod
		to   netip.AddrPort
		want string
	}{
		{podA, netip.AddrPortFrom(podB.IP(true), uint16(port)), podB.Name},
		{podA, netip.AddrPortFrom(podB.IP(false), uint16(port)), podB.Name},
		{podB, netip.AddrPortFrom(podA.IP(true), uint16(portA)), podA.Name},
	} {
		got, err := netnstest.Exchange(ctx, c.from.NS, c.to.String(), 1<<20)
		if err != nil {
			t.Fatalf("%s -> %s: %v", c.from.Name, c.to, err)
		}
		if got != c.want {
			t.Errorf("%s -> %s answered by %s, want %s", c.from.Name, c.to, got, c.want)
		}
	}
	frames, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	checkOnlyWireGuardCrosses(t, frames, []netip.Addr{a.IP, b.IP}, wireguard.DefaultListenPort)

	// wg(8) sees the peer, its endpoint and a recent handshake.
	out, err := a.NS.Run(ctx, "wg", "show", wa.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"peer: " + wb.PublicKey,
		"endpoint: " + peerB.Endpoint.String(),
		"allowed ips: 10.2.0.7/32, fd00:2::7/128",
		"latest handshake:",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("wg show %s lacks %q:\n%s", wa.Name, want, out)
		}
	}
	checkRecentHandshake(ctx, t, a.NS, wa.Name, wb.PublicKey)
	st := wa.peers(ctx, t)
	if len(st) != 1 || st[0].Name != "c2/b" || st[0].ReceiveBytes == 0 || st[0].LastHandshake.IsZero() {
		t.Errorf("Peers() = %+v, want c2/b with a handshake and bytes received", st)
	}

	// Node b leaves a's view: its peer and routes go, and so does the
	// pod traffic, in both directions.
	wa.setPeers(ctx, t)
	checkRoutes(t, a.NS, wa.Name, nil)
	if out, err := a.NS.Run(ctx, "wg", "show", wa.Name, "peers"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("wg show %s peers after removal = %q, %v; want none", wa.Name, out, err)
	}
	if _, err := netnstest.Exchange(ctx, podA.NS, addrB4, 1); !errors.Is(err, syscall.ENETUNREACH) && !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Errorf("pod a -> pod b after the peer was removed: %v, want unreachable", err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	defer dcancel()
	if _, err := netnstest.Exchange(dctx, podB.NS, netip.AddrPortFrom(podA.IP(true), uint16(portA)).String(), 1); err == nil {
		t.Error("pod b still reached pod a after a removed b as a peer")
	}
}

// checkOnlyWireGuardCrosses checks that the underlay carried WireGuard
// traffic between the nodes, and nothing else but ARP.
func checkOnlyWireGuardCrosses(t *testing.T, frames []netnstest.Frame, nodes []netip.Addr, port uint16) {
	t.Helper()
	var wg, arp int
	for _, f := range frames {
		switch f.EtherType {
		case netnstest.EtherTypeARP:
			arp++
		case netnstest.EtherTypeIPv4:
			if f.Protocol != syscall.IPPROTO_UDP || (f.SrcPort != port && f.DstPort != port) ||
				!slices.Contains(nodes, f.Src) || !slices.Contains(nodes, f.Dst) {
				t.Errorf("non-WireGuard packet crossed the underlay: %v", f)
				continue
			}
			wg++
		default:
			t.Errorf("frame of another family crossed the underlay: %v", f)
		}
	}
	if wg == 0 {
		t.Errorf("no WireGuard packet crossed the underlay among %d frames", len(frames))
	}
	t.Logf("underlay carried %d WireGuard frames and %d ARP frames, nothing else", wg, arp)
}

// checkRoutes checks that the device's routes (RouteProtocol) are want.
func checkRoutes(t *testing.T, ns *netnstest.Namespace, dev string, want []netip.Prefix) {
	t.Helper()
	got := deviceRoutes(t, ns, dev, wireguard.RouteProtocol)
	want = slices.Clone(want)
	slices.SortFunc(want, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("routes through %s in %s = %v, want %v", dev, ns.Name(), got, want)
	}
}

// deviceRoutes lists the main table's routes through dev with protocol
// proto, sorted.
func deviceRoutes(t *testing.T, ns *netnstest.Namespace, dev string, proto netlink.RouteProtocol) []netip.Prefix {
	t.Helper()
	h := ns.Netlink(t)
	link, err := h.LinkByName(dev)
	if err != nil {
		t.Fatalf("%s in %s: %v", dev, ns.Name(), err)
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: proto},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Prefix
	for _, r := range routes {
		p, err := netip.ParsePrefix(r.Dst.String())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
	}
	slices.SortFunc(got, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	return got
}

func linkMTU(t *testing.T, ns *netnstest.Namespace, dev string) int {
	t.Helper()
	link, err := ns.Netlink(t).LinkByName(dev)
	if err != nil {
		t.Fatalf("%s in %s: %v", dev, ns.Name(), err)
	}
	return link.Attrs().MTU
}

// checkRecentHandshake reads the peer's latest handshake as wg(8) reports
// it and checks that it happened in the last few minutes.
func checkRecentHandshake(ctx context.Context, t *testing.T, ns *netnstest.Namespace, dev, peer string) {
	t.Helper()
	out, err := ns.Run(ctx, "wg", "show", dev, "latest-handshakes")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		key, ts, ok := strings.Cut(line, "\t")
		if !ok || key != peer {
			continue
		}
		sec, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			t.Fatalf("wg show latest-handshakes: %q: %v", line, err)
		}
		if age := time.Since(time.Unix(sec, 0)); sec == 0 || age > 3*time.Minute || age < -time.Minute {
			t.Errorf("latest handshake with %s at %d (%v ago), want a recent one", peer, sec, age)
		}
		return
	}
	t.Errorf("wg show %s latest-handshakes lists no peer %s:\n%s", dev, peer, out)
}
