package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// listRetries bounds retries of a netlink dump the kernel interrupted
// because the table changed during it.
const listRetries = 5

// routedThrough lists the prefixes the device routes: routes in its table
// through it with RouteProtocol. Routes others added are not listed, so
// they are never removed.
func routedThrough(linkIndex, table int) ([]netip.Prefix, error) {
	filter := &netlink.Route{LinkIndex: linkIndex, Table: table, Protocol: RouteProtocol}
	mask := uint64(netlink.RT_FILTER_OIF | netlink.RT_FILTER_TABLE | netlink.RT_FILTER_PROTOCOL)
	var (
		routes []netlink.Route
		err    error
	)
	for range listRetries {
		routes, err = netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, mask)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	out := make([]netip.Prefix, 0, len(routes))
	for _, r := range routes {
		if r.Dst == nil {
			continue // a default route is never ours: AllowedIPs of length 0 are refused
		}
		if p, ok := prefixOf(r.Dst); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func tunnelRoute(linkIndex, table int, p netip.Prefix) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       toIPNet(p),
		Table:     table,
		Protocol:  RouteProtocol,
		Scope:     netlink.SCOPE_LINK,
	}
	if p.Addr().Is6() {
		r.Scope = netlink.SCOPE_UNIVERSE // the kernel ignores IPv6 scopes
	}
	return r
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	if bits == 32 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, ones), true
}
