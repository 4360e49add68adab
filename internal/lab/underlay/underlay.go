// Package underlay builds and removes a lab's network: the underlay
// namespace with its bridge, one namespace per node attached to the bridge,
// the routes that let the nodes of one cluster reach each other's pod CIDRs
// (the lab's CNI), and the host's single link into the lab, which carries the
// API addresses. Nodes have no default route, so nothing leaves the lab, and
// nodes of different clusters reach each other by node IP only.
//
// It must not import the lab's process packages (supervisor, kubelet).
package underlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
)

// Build creates the network of l. When it fails, whatever it created is
// removed again.
func Build(l *topology.Lab) (err error) {
	defer func() {
		if err != nil {
			err = errors.Join(err, Teardown(l.Name))
		}
	}()
	if err := nsexec.Create(l.UnderlayNetns); err != nil {
		return err
	}
	under, err := openHandle(l.UnderlayNetns)
	if err != nil {
		return err
	}
	defer under.close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: l.Bridge}}
	if err := under.h.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", l.Bridge, err)
	}
	if err := under.h.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", l.Bridge, err)
	}
	if err := buildHostLink(l, under, br); err != nil {
		return err
	}
	for _, c := range l.Clusters {
		for _, n := range c.Nodes {
			if err := buildNode(l, c, n, under, br); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
	}
	return nil
}

func buildHostLink(l *topology.Lab, under *handle, br netlink.Link) error {
	host := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: l.HostLink},
		PeerName:      l.HostLinkPeer,
		PeerNamespace: netlink.NsFd(int(under.ns)),
	}
	if err := netlink.LinkAdd(host); err != nil {
		return fmt.Errorf("create host link %s: %w", l.HostLink, err)
	}
	link, err := netlink.LinkByName(l.HostLink)
	if err != nil {
		return fmt.Errorf("find host link %s: %w", l.HostLink, err)
	}
	// The alias names the owner for anyone who finds the link in `ip link`.
	if err := netlink.LinkSetAlias(link, "isthmus lab "+l.Name); err != nil {
		return fmt.Errorf("name host link %s: %w", l.HostLink, err)
	}
	addrs := []netip.Prefix{netip.PrefixFrom(l.HostAddr, l.Underlay.Bits())}
	for _, c := range l.Clusters {
		addrs = append(addrs, netip.PrefixFrom(c.APIAddr, 32))
	}
	for _, a := range addrs {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(a)}); err != nil {
			return fmt.Errorf("add %s to host link %s: %w", a, l.HostLink, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up host link %s: %w", l.HostLink, err)
	}
	return attach(under, l.HostLinkPeer, br)
}

func buildNode(l *topology.Lab, c topology.Cluster, n topology.Node, under *handle, br netlink.Link) error {
	if err := nsexec.Create(n.Netns); err != nil {
		return err
	}
	node, err := openHandle(n.Netns)
	if err != nil {
		return err
	}
	defer node.close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: n.BridgePort},
		PeerName:      topology.NodeLink,
		PeerNamespace: netlink.NsFd(int(node.ns)),
	}
	if err := under.h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create link %s: %w", n.BridgePort, err)
	}
	if err := attach(under, n.BridgePort, br); err != nil {
		return err
	}
	eth, err := node.h.LinkByName(topology.NodeLink)
	if err != nil {
		return fmt.Errorf("find %s: %w", topology.NodeLink, err)
	}
	if err := node.h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.IP, l.Underlay.Bits()))}); err != nil {
		return fmt.Errorf("add %s: %w", n.IP, err)
	}
	if err := node.h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring up %s: %w", topology.NodeLink, err)
	}
	// The lab's CNI: every other node of the cluster routes its pod CIDR.
	for _, peer := range c.Nodes {
		if peer.Name == n.Name {
			continue
		}
		r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(peer.PodCIDR), Gw: peer.IP.AsSlice()}
		if err := node.h.RouteAdd(r); err != nil {
			return fmt.Errorf("route %s via %s: %w", peer.PodCIDR, peer.IP, err)
		}
	}
	// Nodes forward between pods and the underlay.
	return nsexec.Do(nsexec.Path(n.Netns), func() error {
		return writeSysctl("net/ipv4/ip_forward", "1")
	})
}

func attach(under *handle, name string, br netlink.Link) error {
	link, err := under.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := under.h.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("attach %s to the bridge: %w", name, err)
	}
	if err := under.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s: %w", name, err)
	}
	return nil
}

// Teardown removes the host link and every network namespace of lab name
// (underlay, nodes and pods); the links inside go with their namespaces
// once no process holds them. It is safe to repeat.
func Teardown(name string) error {
	var errs []error
	if link, err := netlink.LinkByName(topology.HostLink(name)); err == nil {
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete host link %s: %w", link.Attrs().Name, err))
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		errs = append(errs, fmt.Errorf("find host link: %w", err))
	}
	names, err := nsexec.List(topology.NetnsPrefix(name))
	if err != nil {
		errs = append(errs, err)
	}
	for _, ns := range names {
		errs = append(errs, nsexec.Delete(ns))
	}
	return errors.Join(errs...)
}

// Leftovers lists the kernel network objects of lab name that exist: the
// host link and its namespaces. An empty list means Teardown has nothing to
// do.
func Leftovers(name string) ([]string, error) {
	var found []string
	if _, err := netlink.LinkByName(topology.HostLink(name)); err == nil {
		found = append(found, "link "+topology.HostLink(name))
	}
	names, err := nsexec.List(topology.NetnsPrefix(name))
	for _, n := range names {
		found = append(found, "netns "+n)
	}
	return found, err
}

// LockFile serialises the choice of underlay slots machine-wide.
const LockFile = "/run/isthmus/underlay.lock"

// BuildInFreeSlot builds the lab that plan returns for the first underlay
// slot no route of the root namespace overlaps, holding LockFile so that labs
// started at the same time choose different slots.
func BuildInFreeSlot(plan func(slot int) (*topology.Lab, error)) (*topology.Lab, error) {
	if err := os.MkdirAll(filepath.Dir(LockFile), 0o755); err != nil {
		return nil, fmt.Errorf("create lock directory: %w", err)
	}
	lock, err := os.OpenFile(LockFile, os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", LockFile, err)
	}
	defer lock.Close() // releases the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", LockFile, err)
	}
	for slot := 0; slot <= topology.MaxSlot; slot++ {
		free, err := SlotFree(slot)
		if err != nil {
			return nil, err
		}
		if !free {
			continue
		}
		l, err := plan(slot)
		if err != nil {
			return nil, err
		}
		return l, Build(l)
	}
	return nil, fmt.Errorf("every underlay subnet %s to %s overlaps a route of this machine; remove labs with `isthmus lab down --name ...`", topology.UnderlayForSlot(0), topology.UnderlayForSlot(topology.MaxSlot))
}

// SlotFree reports whether no route of the root namespace overlaps the
// underlay of slot, so a lab can use it.
func SlotFree(slot int) (bool, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("list routes: %w", err)
	}
	subnet := topology.UnderlayForSlot(slot)
	for _, r := range routes {
		if r.Dst == nil {
			continue // the default route overlaps everything, by design
		}
		p, ok := prefixOf(r.Dst)
		if ok && p.Bits() > 0 && p.Overlaps(subnet) {
			return false, nil
		}
	}
	return true, nil
}

type handle struct {
	ns netns.NsHandle
	h  *netlink.Handle
}

func openHandle(name string) (*handle, error) {
	ns, err := netns.GetFromPath(nsexec.Path(name))
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink in %s: %w", name, err)
	}
	return &handle{ns: ns, h: h}, nil
}

func (h *handle) close() {
	h.h.Close()
	h.ns.Close()
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// writeSysctl writes a sysctl of the calling thread's network namespace.
func writeSysctl(key, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0); err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	return nil
}
