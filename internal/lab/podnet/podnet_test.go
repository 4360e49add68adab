package podnet_test

import (
	"crypto/rand"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/lab/podnet"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/lab/underlay"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

func TestPodsReachPodsOfTheirClusterOnly(t *testing.T) {
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

	type pod struct {
		node topology.Node
		sb   podnet.Sandbox
		net  podnet.Network
	}
	mk := func(node topology.Node, uid string, host int) pod {
		t.Helper()
		ip := node.PodCIDR.Addr().As4()
		ip[3] = byte(host)
		nw := podnet.Network{Node: handleIn(t, node.Netns)}
		sb, err := nw.Setup(node.PodNetns(uid), uid, netip.AddrFrom4(ip))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nw.Teardown(sb) })
		serve(t, sb.Netns, sb.IP)
		return pod{node, sb, nw}
	}
	a := mk(c1n1, "uid-a", 2)
	b := mk(c1n1, "uid-b", 3)
	c := mk(c1n2, "uid-c", 2)
	d := mk(c2n1, "uid-d", 2)

	for _, tc := range []struct {
		from, to pod
		reach    bool
	}{
		{a, b, true},  // same node
		{a, c, true},  // other node of the cluster
		{c, a, true},  // and back
		{a, d, false}, // other cluster: only the mesh may carry this
		{d, a, false},
	} {
		err := dial(tc.from.sb.Netns, tc.to.sb.IP)
		if (err == nil) != tc.reach {
			t.Errorf("%s -> %s: reach=%v, err=%v", tc.from.sb.IP, tc.to.sb.IP, tc.reach, err)
		}
	}
	// The node reaches its pods, and pods reach node IPs of their cluster.
	if err := dial(c1n1.Netns, a.sb.IP); err != nil {
		t.Errorf("node to own pod: %v", err)
	}

	if err := a.net.Teardown(a.sb); err != nil {
		t.Fatal(err)
	}
	if err := a.net.Teardown(a.sb); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
	if _, err := a.net.Node.LinkByName(a.sb.HostVeth); err == nil {
		t.Errorf("veth %s left behind", a.sb.HostVeth)
	}
	if left, _ := nsexec.List(a.sb.Netns); len(left) != 0 {
		t.Errorf("namespace left behind: %v", left)
	}
}

func serve(t *testing.T, ns string, addr netip.Addr) {
	t.Helper()
	var ln net.Listener
	if err := nsexec.Do(nsexec.Path(ns), func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 7).String())
		return err
	}); err != nil {
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
	return nsexec.Do(nsexec.Path(ns), func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, 7).String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
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
