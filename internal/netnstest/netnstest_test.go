package netnstest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/netnstest"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	netnstest.Main(m, map[string]netnstest.Helper{"probe": runProbe})
}

// probe is the RPC receiver of the "probe" helper.
type probe struct{}

// NetnsInode reports the inode of the child's network namespace.
func (probe) NetnsInode(_ struct{}, reply *uint64) error {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return err
	}
	*reply = st.Ino
	return nil
}

// Echo returns its argument, and writes to stdout to show that stray
// output does not corrupt the calls.
func (probe) Echo(s string, reply *string) error {
	fmt.Println("stray stdout line")
	*reply = s
	return nil
}

func runProbe(conn io.ReadWriteCloser) error {
	return netnstest.ServeRPC(conn, probe{})
}

func TestChildIsBornInNamespace(t *testing.T) {
	netnstest.Require(t)
	ns := netnstest.NewNamespace(t, "nt-child")
	child := netnstest.StartChild(t, ns, "probe")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var got uint64
	if err := child.Call(ctx, "NetnsInode", struct{}{}, &got); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Handle()), &st); err != nil {
		t.Fatal(err)
	}
	if got != st.Ino {
		t.Errorf("child's netns inode = %d, want the namespace's %d", got, st.Ino)
	}
	var echo string
	if err := child.Call(ctx, "Echo", "hello", &echo); err != nil || echo != "hello" {
		t.Errorf("Echo = %q, %v; want hello", echo, err)
	}
	if err := child.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := child.Call(ctx, "Echo", "late", &echo); err == nil {
		t.Error("Call after Stop succeeded")
	}
}

// TestTopology checks the harness's promises: pods reach pods of another
// node only where a route says so, and a capture on the underlay sees
// every frame of plainly routed pod traffic, pod addresses included.
func TestTopology(t *testing.T) {
	netnstest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	u := netnstest.NewUnderlay(t, netnstest.UnderlayConfig{MTU: 1400})
	a := u.AddNode(t, netnstest.NodeConfig{Name: "a", Cluster: "c1", PodCIDRs: []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd00:1::/64")}})
	b := u.AddNode(t, netnstest.NodeConfig{Name: "b", Cluster: "c1"})
	podA := a.AddPod(t, "pa")
	podB := b.AddPod(t, "pb", netip.MustParseAddr("10.2.0.7"))
	podA2 := a.AddPod(t, "pa2")

	if got, want := podA.IPs, []netip.Addr{netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00:1::2")}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("first pod's IPs = %v, want %v", got, want)
	}
	if got := podA2.IP(true); got != netip.MustParseAddr("10.1.0.3") {
		t.Errorf("second pod's IPv4 = %v, want 10.1.0.3", got)
	}

	// Pods on one node reach each other, over both families.
	for _, v4 := range []bool{true, false} {
		exchange(ctx, t, podA, podA2, v4)
	}

	// Across nodes nothing is routed yet.
	l, err := podB.NS.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	c, err := podA.NS.Dial(dctx, "tcp", netip.AddrPortFrom(podB.IP(true), 7000).String())
	dcancel()
	if err == nil {
		c.Close()
		t.Fatal("pod on node a reached a pod on node b with no route between them")
	}
	if !isUnreachable(err) {
		t.Errorf("dial without a route failed with %v, want unreachable", err)
	}

	// With plain routes it works, and the underlay sees the pod addresses.
	a.RouteVia(t, b, netip.MustParsePrefix("10.2.0.7/32"))
	b.RouteVia(t, a, netip.MustParsePrefix("10.1.0.0/24"))
	capture, err := u.NS.Capture()
	if err != nil {
		t.Fatal(err)
	}
	exchange(ctx, t, podA, podB, true)
	frames, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	var podFrames, v6 int
	for _, f := range frames {
		if f.Src == podA.IP(true) && f.Dst == podB.IP(true) && f.Protocol == unix.IPPROTO_TCP {
			podFrames++
		}
		if f.EtherType == netnstest.EtherTypeIPv6 {
			v6++
		}
	}
	if podFrames == 0 {
		t.Errorf("capture saw no TCP frame from %s to %s among %d frames", podA.IP(true), podB.IP(true), len(frames))
	}
	if v6 != 0 {
		t.Errorf("capture saw %d IPv6 frames on an IPv4 underlay", v6)
	}

	// The bridge itself stays silent: with multicast snooping it would
	// join 224.0.0.106 and send IGMP reports across the underlay.
	out, err := u.NS.Run(ctx, "ip", "maddr", "show", "dev", "br0")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "224.0.0.106") {
		t.Errorf("underlay bridge joined the multicast router discovery group:\n%s", out)
	}

	out, err = a.NS.Run(ctx, "ip", "-4", "route", "show")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "10.2.0.7 via "+b.IP.String()) {
		t.Errorf("ip route in node a lacks the route to 10.2.0.7 via %s:\n%s", b.IP, out)
	}
}

// exchange checks a TCP connection with data both ways from one pod to
// the other.
func exchange(ctx context.Context, t *testing.T, from, to *netnstest.Pod, v4 bool) {
	t.Helper()
	port := to.ServeEcho(t, 0)
	got, err := netnstest.Exchange(ctx, from.NS, netip.AddrPortFrom(to.IP(v4), uint16(port)).String(), 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	if got != to.Name {
		t.Errorf("%s answered, want %s", got, to.Name)
	}
}

func isUnreachable(err error) bool {
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH)
}
