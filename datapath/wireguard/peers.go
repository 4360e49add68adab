package wireguard

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// Peer is a remote node as the device should know it.
type Peer struct {
	// Name names the peer in logs and errors, such as "cluster2/node-b".
	// Empty means the public key is used.
	Name string

	// PublicKey is the remote node's WireGuard public key, base64-encoded:
	// its Node annotation meshconfig.NodeWireGuardPubKeyAnnotation, or
	// protocol.Node.WireguardPubKey.
	PublicKey string

	// Endpoint is where the remote node's device listens: its InternalIP
	// and its WireGuard port (DefaultListenPort unless configured
	// otherwise).
	Endpoint netip.AddrPort

	// AllowedIPs are the addresses that may arrive from the peer and are
	// routed to it: the remote node's pod CIDRs or, for a node without a
	// pod CIDR, the addresses of its pods as /32 and /128 prefixes (from
	// the ipcache). The agent computes this list. Each prefix belongs to
	// one peer. A prefix of length 0, or one covering any peer's Endpoint
	// (the tunnel's packets would be routed into the tunnel), is refused.
	AllowedIPs []netip.Prefix
}

func (p Peer) label() string {
	if p.Name != "" {
		return p.Name
	}
	return p.PublicKey
}

// PeerError reports a peer SetPeers skipped, or an AllowedIP it left out
// of a peer, because it was invalid or conflicted with another peer.
type PeerError struct {
	// Peer is the peer's Name, or its public key when it has none.
	Peer string
	// WholePeer is true when the peer was skipped, false when only Prefix
	// was left out of it.
	WholePeer bool
	Prefix    netip.Prefix
	Err       error
}

func (e *PeerError) Error() string { return fmt.Sprintf("peer %s: %v", e.Peer, e.Err) }
func (e *PeerError) Unwrap() error { return e.Err }

// PeerStatus is a peer as the device reports it.
type PeerStatus struct {
	// Name is the peer's Name in the last SetPeers; empty for a peer the
	// device had before.
	Name       string
	PublicKey  string
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	// LastHandshake is when the last handshake completed; zero if never.
	LastHandshake time.Time
	ReceiveBytes  int64
	TransmitBytes int64
}

// SetPeers makes peers the device's peers and routes. It adds the new
// peers, updates those whose endpoint or AllowedIPs changed and removes
// the others explicitly, leaving unchanged peers and their sessions
// alone; routes every AllowedIP through the device in Config.RouteTable
// and removes the routes it owns (RouteProtocol) that no peer needs any
// more; and sets the device's MTU from the underlay paths to the peers.
// Peers and routes left by an earlier run are reconciled the same way.
//
// Invalid peers and AllowedIPs are logged, skipped and returned in
// skipped; the rest are applied. err reports a failure to apply, after
// which the device may be part way there: call SetPeers again, it is
// idempotent.
func (d *Device) SetPeers(ctx context.Context, peers []Peer) (skipped []*PeerError, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	wanted, names, skipped := validatePeers(d.key.PublicKey(), peers, d.cfg.PersistentKeepalive)
	for _, e := range skipped {
		d.logger.Warn("Skipped invalid WireGuard peer configuration", logfields.Peer, e.Peer, logfields.Error, e.Err)
	}
	if err := ctx.Err(); err != nil {
		return skipped, err
	}

	dev, err := d.client.Device(d.cfg.DeviceName)
	if err != nil {
		return skipped, fmt.Errorf("read device %s: %w", d.cfg.DeviceName, err)
	}
	plan := planPeers(currentPeers(dev), wanted)
	if !plan.empty() {
		if err := d.client.ConfigureDevice(d.cfg.DeviceName, plan.config()); err != nil {
			return skipped, fmt.Errorf("configure peers of %s: %w", d.cfg.DeviceName, err)
		}
		d.logPlan(plan, names)
	}
	d.names = names
	if err := ctx.Err(); err != nil {
		return skipped, err
	}

	link, err := netlink.LinkByName(d.cfg.DeviceName)
	if err != nil {
		return skipped, fmt.Errorf("find device %s: %w", d.cfg.DeviceName, err)
	}
	var endpoints []netip.Addr
	for _, w := range wanted {
		endpoints = append(endpoints, w.endpoint.Addr())
	}
	return skipped, errors.Join(
		d.syncRoutes(link.Attrs().Index, routedPrefixes(wanted)),
		d.syncMTU(link, endpoints),
	)
}

func (d *Device) logPlan(plan peerPlan, names map[wgtypes.Key]string) {
	for _, k := range plan.remove {
		name := d.names[k]
		if name == "" {
			name = k.String()
		}
		d.logger.Info("Removed WireGuard peer", logfields.Peer, name)
	}
	for _, p := range plan.update {
		d.logger.Info("Updated WireGuard peer", logfields.Peer, names[p.key], logfields.Endpoint, p.endpoint, "allowedIPs", p.allowedIPs)
	}
	for _, p := range plan.add {
		d.logger.Info("Added WireGuard peer", logfields.Peer, names[p.key], logfields.Endpoint, p.endpoint, "allowedIPs", p.allowedIPs)
	}
}

// syncRoutes routes exactly the wanted prefixes through the device, among
// the routes it owns. It goes on past a failed route and reports all.
func (d *Device) syncRoutes(linkIndex int, wanted []netip.Prefix) error {
	current, err := routedThrough(linkIndex, d.cfg.RouteTable)
	if err != nil {
		return err
	}
	add, del := planRoutes(current, wanted)
	var errs []error
	for _, p := range del {
		if err := netlink.RouteDel(tunnelRoute(linkIndex, d.cfg.RouteTable, p)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove route %s: %w", p, err))
		}
	}
	for _, p := range add {
		if err := netlink.RouteReplace(tunnelRoute(linkIndex, d.cfg.RouteTable, p)); err != nil {
			errs = append(errs, fmt.Errorf("route %s through %s: %w", p, d.cfg.DeviceName, err))
		}
	}
	if len(add)+len(del) > 0 {
		d.logger.Info("Updated routes through WireGuard", "added", len(add), "removed", len(del), "routes", len(wanted))
	}
	return errors.Join(errs...)
}

// syncMTU sets the device's MTU for the underlay paths to endpoints.
func (d *Device) syncMTU(link netlink.Link, endpoints []netip.Addr) error {
	mtu := tunnelMTU(d.underlayPaths(endpoints, link.Attrs().Index))
	if mtu != link.Attrs().MTU {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set MTU of %s to %d: %w", d.cfg.DeviceName, mtu, err)
		}
		d.logger.Info("Set WireGuard device MTU", "mtu", mtu, "was", link.Attrs().MTU)
	}
	d.mtu = mtu
	return nil
}

// underlayPaths finds the path to each endpoint: the MTU of the device
// (or route) the kernel would send to it by, unless Config.UnderlayMTU
// says it, and its family. Endpoints without a route yet, or routed
// through the tunnel itself, are left out; with none left, the default
// route's path stands in.
func (d *Device) underlayPaths(endpoints []netip.Addr, ownIndex int) []underlayPath {
	var paths []underlayPath
	for _, ep := range endpoints {
		if d.cfg.UnderlayMTU != 0 {
			paths = append(paths, underlayPath{mtu: d.cfg.UnderlayMTU, ipv6: ep.Is6()})
			continue
		}
		routes, err := netlink.RouteGet(net.IP(ep.AsSlice()))
		if err != nil || len(routes) == 0 || routes[0].LinkIndex == ownIndex {
			continue
		}
		if mtu := routeMTU(routes[0]); mtu > 0 {
			paths = append(paths, underlayPath{mtu: mtu, ipv6: ep.Is6()})
		}
	}
	if len(paths) > 0 {
		return paths
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			continue
		}
		for _, r := range routes {
			if r.Dst != nil && !isDefault(r.Dst) || r.LinkIndex == ownIndex || r.LinkIndex == 0 {
				continue
			}
			mtu := d.cfg.UnderlayMTU
			if mtu == 0 {
				mtu = routeMTU(r)
			}
			if mtu > 0 {
				return []underlayPath{{mtu: mtu, ipv6: family == netlink.FAMILY_V6}}
			}
		}
	}
	if d.cfg.UnderlayMTU != 0 {
		return []underlayPath{{mtu: d.cfg.UnderlayMTU, ipv6: true}}
	}
	return nil
}

// routeMTU is the MTU of a route's device, or the route's own if lower.
func routeMTU(r netlink.Route) int {
	link, err := netlink.LinkByIndex(r.LinkIndex)
	if err != nil {
		return 0
	}
	mtu := link.Attrs().MTU
	if r.MTU > 0 && r.MTU < mtu {
		mtu = r.MTU
	}
	return mtu
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// Peers reports the device's peers, sorted by public key.
func (d *Device) Peers() ([]PeerStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	dev, err := d.client.Device(d.cfg.DeviceName)
	if err != nil {
		return nil, fmt.Errorf("read device %s: %w", d.cfg.DeviceName, err)
	}
	out := make([]PeerStatus, 0, len(dev.Peers))
	for _, p := range dev.Peers {
		st := PeerStatus{
			Name:          d.names[p.PublicKey],
			PublicKey:     p.PublicKey.String(),
			LastHandshake: p.LastHandshakeTime,
			ReceiveBytes:  p.ReceiveBytes,
			TransmitBytes: p.TransmitBytes,
		}
		if p.Endpoint != nil {
			st.Endpoint = p.Endpoint.AddrPort()
		}
		for _, n := range p.AllowedIPs {
			if pfx, ok := prefixOf(&n); ok {
				st.AllowedIPs = append(st.AllowedIPs, pfx)
			}
		}
		if st.LastHandshake.Unix() <= 0 {
			st.LastHandshake = time.Time{}
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return cmp.Compare(a.PublicKey, b.PublicKey) })
	return out, nil
}

// currentPeers converts the device's peers to canonical form.
func currentPeers(dev *wgtypes.Device) []peerState {
	out := make([]peerState, 0, len(dev.Peers))
	for _, p := range dev.Peers {
		st := peerState{key: p.PublicKey, keepalive: p.PersistentKeepaliveInterval}
		if p.Endpoint != nil {
			ap := p.Endpoint.AddrPort()
			st.endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		for _, n := range p.AllowedIPs {
			if pfx, ok := prefixOf(&n); ok {
				st.allowedIPs = append(st.allowedIPs, canonicalPrefix(pfx))
			}
		}
		slices.SortFunc(st.allowedIPs, comparePrefix)
		st.allowedIPs = slices.Compact(st.allowedIPs)
		out = append(out, st)
	}
	return out
}

// config is the wgctrl change that carries out the plan: explicit
// removals and per-peer replacement of AllowedIPs, never ReplacePeers.
func (p peerPlan) config() wgtypes.Config {
	var cfg wgtypes.Config
	for _, k := range p.remove {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
	}
	for _, s := range slices.Concat(p.update, p.add) {
		keepalive := s.keepalive
		pc := wgtypes.PeerConfig{
			PublicKey:                   s.key,
			Endpoint:                    net.UDPAddrFromAddrPort(s.endpoint),
			PersistentKeepaliveInterval: &keepalive,
			ReplaceAllowedIPs:           true,
		}
		for _, a := range s.allowedIPs {
			pc.AllowedIPs = append(pc.AllowedIPs, *toIPNet(a))
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	return cfg
}
