// Package podnet is the lab's pod network plugin: for each pod it creates a
// network namespace joined to its node by a veth pair, with one address from
// the node's pod CIDR.
//
// Routing is Calico-style: the pod holds its address as a /32 and a default
// route through the link-local gateway 169.254.1.1, whose neighbour entry
// points at the node's end of the veth, so the pod never needs to resolve
// anything else; the node routes the pod's /32 to that veth and forwards
// between pods and the underlay. No bridge and no proxy ARP are involved, and
// pods of one node reach each other through the node's routing table, like
// pods of other nodes.
//
// It must not import the lab's process packages (supervisor, kubelet).
package podnet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
)

// Gateway is the link-local next hop of every pod's default route.
var Gateway = netip.MustParseAddr("169.254.1.1")

// PodLink is the pod's interface inside its namespace.
const PodLink = "eth0"

// HostVeth is the node-side name of the veth of the pod with uid: unique
// within the node and at most 15 characters.
func HostVeth(uid string) string {
	sum := sha256.Sum256([]byte(uid))
	return "lxc" + hex.EncodeToString(sum[:])[:11]
}

// Network is one node's view of pod networking. The node side is the
// namespace Node's handle works in. It is safe for concurrent use by
// distinct pods.
type Network struct {
	// Node is a netlink handle in the node's network namespace.
	Node *netlink.Handle
}

// Sandbox describes a pod's network.
type Sandbox struct {
	Netns    string // name of the pod's namespace (in /run/netns)
	IP       netip.Addr
	HostVeth string
}

// Setup creates the namespace netnsName for the pod with uid, with address
// ip. When it fails, whatever it created is removed again.
func (n Network) Setup(netnsName, uid string, ip netip.Addr) (sb Sandbox, err error) {
	sb = Sandbox{Netns: netnsName, IP: ip, HostVeth: HostVeth(uid)}
	if err := nsexec.Create(netnsName); err != nil {
		return sb, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Teardown(sb))
		}
	}()
	ns, err := netns.GetFromPath(nsexec.Path(netnsName))
	if err != nil {
		return sb, fmt.Errorf("open pod namespace: %w", err)
	}
	defer ns.Close()
	pod, err := netlink.NewHandleAt(ns)
	if err != nil {
		return sb, fmt.Errorf("netlink in pod namespace: %w", err)
	}
	defer pod.Close()

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: sb.HostVeth},
		PeerName:      PodLink,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := n.Node.LinkAdd(veth); err != nil {
		return sb, fmt.Errorf("create veth %s: %w", sb.HostVeth, err)
	}
	host, err := n.Node.LinkByName(sb.HostVeth)
	if err != nil {
		return sb, fmt.Errorf("find veth %s: %w", sb.HostVeth, err)
	}
	if err := n.Node.LinkSetUp(host); err != nil {
		return sb, fmt.Errorf("bring up veth %s: %w", sb.HostVeth, err)
	}
	if err := n.Node.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: hostNet(ip), Scope: netlink.SCOPE_LINK}); err != nil {
		return sb, fmt.Errorf("route %s to veth %s: %w", ip, sb.HostVeth, err)
	}

	eth, err := pod.LinkByName(PodLink)
	if err != nil {
		return sb, fmt.Errorf("find pod %s: %w", PodLink, err)
	}
	if err := pod.AddrAdd(eth, &netlink.Addr{IPNet: hostNet(ip)}); err != nil {
		return sb, fmt.Errorf("add %s to pod: %w", ip, err)
	}
	if err := pod.LinkSetUp(eth); err != nil {
		return sb, fmt.Errorf("bring up pod %s: %w", PodLink, err)
	}
	gw := Gateway.AsSlice()
	if err := pod.NeighAdd(&netlink.Neigh{
		LinkIndex:    eth.Attrs().Index,
		Family:       netlink.FAMILY_V4,
		State:        netlink.NUD_PERMANENT,
		IP:           gw,
		HardwareAddr: host.Attrs().HardwareAddr,
	}); err != nil {
		return sb, fmt.Errorf("add gateway neighbour: %w", err)
	}
	if err := pod.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: hostNet(Gateway), Scope: netlink.SCOPE_LINK}); err != nil {
		return sb, fmt.Errorf("route to gateway: %w", err)
	}
	if err := pod.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw}); err != nil {
		return sb, fmt.Errorf("default route: %w", err)
	}
	return sb, nil
}

// Teardown removes a pod's veth and namespace. It is safe to repeat, and to
// call on a half-built sandbox.
func (n Network) Teardown(sb Sandbox) error {
	var errs []error
	if link, err := n.Node.LinkByName(sb.HostVeth); err == nil {
		if err := n.Node.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", sb.HostVeth, err))
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		errs = append(errs, fmt.Errorf("find veth %s: %w", sb.HostVeth, err))
	}
	errs = append(errs, nsexec.Delete(sb.Netns))
	return errors.Join(errs...)
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}
