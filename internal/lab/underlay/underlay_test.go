package underlay_test

import (
	"crypto/rand"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/lab/underlay"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

func TestBuildAndTeardown(t *testing.T) {
	privileged.Require(t)
	name := "t-" + strings.ToLower(rand.Text()[:8])
	t.Cleanup(func() { _ = underlay.Teardown(name) })
	l, err := underlay.BuildInFreeSlot(func(slot int) (*topology.Lab, error) {
		return topology.New(topology.Config{Name: name}, slot)
	})
	if err != nil {
		t.Fatal(err)
	}
	c1n1, c1n2, c2n1 := l.Clusters[0].Nodes[0], l.Clusters[0].Nodes[1], l.Clusters[1].Nodes[0]

	// Every node reaches every other node, and the host reaches the nodes,
	// by node IP.
	serve(t, c1n2.Netns, c1n2.IP)
	serve(t, c2n1.Netns, c2n1.IP)
	for _, from := range []string{c1n1.Netns, ""} {
		for _, to := range []netip.Addr{c1n2.IP, c2n1.IP} {
			if err := dial(from, to); err != nil {
				t.Errorf("from %q to %s: %v", from, to, err)
			}
		}
	}
	// Nodes reach the API addresses on the host link.
	serve(t, "", l.Clusters[1].APIAddr)
	if err := dial(c1n1.Netns, l.Clusters[1].APIAddr); err != nil {
		t.Errorf("node to API address: %v", err)
	}

	// The lab's CNI routes: own cluster's pod CIDRs only, no default route.
	h := handleIn(t, c1n1.Netns)
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			t.Errorf("node has a default route: %v", r)
			continue
		}
		if r.Gw != nil {
			got = append(got, r.Dst.String()+" via "+r.Gw.String())
		}
	}
	if want := c1n2.PodCIDR.String() + " via " + c1n2.IP.String(); len(got) != 1 || got[0] != want {
		t.Errorf("gateway routes of %s = %v, want [%s]", c1n1.Name, got, want)
	}
	var fwd []byte
	if err := nsexec.Do(nsexec.Path(c1n1.Netns), func() (err error) {
		fwd, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	}); err != nil || strings.TrimSpace(string(fwd)) != "1" {
		t.Errorf("ip_forward in node = %q, %v", fwd, err)
	}
	if free, err := underlay.SlotFree(l.Slot); err != nil || free {
		t.Errorf("SlotFree(own slot) = %v, %v", free, err)
	}

	if err := underlay.Teardown(name); err != nil {
		t.Fatal(err)
	}
	if left, err := underlay.Leftovers(name); err != nil || len(left) != 0 {
		t.Errorf("after Teardown: %v, %v", left, err)
	}
	if _, err := netlink.LinkByName(l.HostLink); err == nil {
		t.Errorf("host link %s still exists", l.HostLink)
	}
	if err := underlay.Teardown(name); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
}

// serve accepts TCP connections on addr:7 inside namespace ns ("" for the
// host) until the test ends.
func serve(t *testing.T, ns string, addr netip.Addr) {
	t.Helper()
	var ln net.Listener
	listen := func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 7).String())
		return err
	}
	var err error
	if ns == "" {
		err = listen()
	} else {
		err = nsexec.Do(nsexec.Path(ns), listen)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

func dial(ns string, addr netip.Addr) error {
	d := func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, 7).String(), 3*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	if ns == "" {
		return d()
	}
	return nsexec.Do(nsexec.Path(ns), d)
}

func handleIn(t *testing.T, name string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}
