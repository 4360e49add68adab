package wireguard

import (
	"bytes"
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// This file is the pure part of SetPeers: checking the wanted peers and
// working out what to change. It touches no device.

// peerState is a peer in canonical form: AllowedIPs masked, unmapped,
// unique and sorted; a zero Endpoint means none.
type peerState struct {
	key        wgtypes.Key
	endpoint   netip.AddrPort
	allowedIPs []netip.Prefix
	keepalive  time.Duration
}

// validatePeers checks the wanted peers against each other and this
// node's own public key. It returns the valid ones in canonical form, in
// the order given, and one *PeerError per peer it dropped or AllowedIP it
// removed from a peer.
func validatePeers(own wgtypes.Key, peers []Peer, keepalive time.Duration) ([]peerState, map[wgtypes.Key]string, []*PeerError) {
	var (
		out   []peerState
		names = make(map[wgtypes.Key]string)
		errs  []*PeerError
	)
	for _, p := range peers {
		label := p.label()
		key, err := wgtypes.ParseKey(p.PublicKey)
		switch {
		case err != nil:
			errs = append(errs, &PeerError{Peer: label, WholePeer: true, Err: fmt.Errorf("public key %q is not 32 bytes of base64", p.PublicKey)})
			continue
		case key == own:
			errs = append(errs, &PeerError{Peer: label, WholePeer: true, Err: fmt.Errorf("public key %s is this node's own", p.PublicKey)})
			continue
		}
		if first, dup := names[key]; dup {
			errs = append(errs, &PeerError{Peer: label, WholePeer: true, Err: fmt.Errorf("public key %s is also peer %s's; kept the first", p.PublicKey, first)})
			continue
		}
		ep := netip.AddrPortFrom(p.Endpoint.Addr().Unmap(), p.Endpoint.Port())
		if !ep.Addr().IsValid() || ep.Addr().IsUnspecified() || ep.Port() == 0 {
			errs = append(errs, &PeerError{Peer: label, WholePeer: true, Err: fmt.Errorf("endpoint %q is not an IP address and port", p.Endpoint)})
			continue
		}
		st := peerState{key: key, endpoint: ep, keepalive: keepalive}
		for _, pfx := range p.AllowedIPs {
			switch {
			case !pfx.IsValid():
				errs = append(errs, &PeerError{Peer: label, Err: fmt.Errorf("AllowedIP %q is not a prefix", pfx)})
				continue
			case pfx.Bits() == 0:
				errs = append(errs, &PeerError{Peer: label, Prefix: pfx, Err: fmt.Errorf("AllowedIP %s would send all traffic of its family to one peer", pfx)})
				continue
			}
			st.allowedIPs = append(st.allowedIPs, canonicalPrefix(pfx))
		}
		slices.SortFunc(st.allowedIPs, comparePrefix)
		st.allowedIPs = slices.Compact(st.allowedIPs)
		names[key] = label
		out = append(out, st)
	}

	// One prefix, one peer: WireGuard would silently move it to whichever
	// peer was configured last. And no prefix may cover a peer's endpoint:
	// the tunnel's own packets would be routed into the tunnel.
	owner := make(map[netip.Prefix]wgtypes.Key)
	for i := range out {
		st := &out[i]
		kept := st.allowedIPs[:0]
		for _, pfx := range st.allowedIPs {
			if other, taken := owner[pfx]; taken {
				errs = append(errs, &PeerError{Peer: names[st.key], Prefix: pfx, Err: fmt.Errorf("AllowedIP %s is also peer %s's; kept the first", pfx, names[other])})
				continue
			}
			if j := slices.IndexFunc(out, func(o peerState) bool { return pfx.Contains(o.endpoint.Addr()) }); j >= 0 {
				errs = append(errs, &PeerError{Peer: names[st.key], Prefix: pfx, Err: fmt.Errorf("AllowedIP %s covers the endpoint %s of peer %s; routing it through the tunnel would loop", pfx, out[j].endpoint, names[out[j].key])})
				continue
			}
			owner[pfx] = st.key
			kept = append(kept, pfx)
		}
		st.allowedIPs = kept
	}
	return out, names, errs
}

// peerPlan is what brings a device's peers to the wanted set.
type peerPlan struct {
	add, update []peerState
	remove      []wgtypes.Key
}

func (p peerPlan) empty() bool {
	return len(p.add) == 0 && len(p.update) == 0 && len(p.remove) == 0
}

// planPeers compares the device's peers with the wanted ones. A peer is
// updated when its endpoint, AllowedIPs or keepalive differ; an endpoint
// that roamed is put back, since nodes are reached at their published IP.
func planPeers(current, wanted []peerState) peerPlan {
	var plan peerPlan
	have := make(map[wgtypes.Key]peerState, len(current))
	for _, c := range current {
		have[c.key] = c
	}
	want := make(map[wgtypes.Key]bool, len(wanted))
	for _, w := range wanted {
		want[w.key] = true
		c, ok := have[w.key]
		switch {
		case !ok:
			plan.add = append(plan.add, w)
		case c.endpoint != w.endpoint || c.keepalive != w.keepalive || !slices.Equal(c.allowedIPs, w.allowedIPs):
			plan.update = append(plan.update, w)
		}
	}
	for _, c := range current {
		if !want[c.key] {
			plan.remove = append(plan.remove, c.key)
		}
	}
	slices.SortFunc(plan.remove, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	return plan
}

// planRoutes compares the prefixes routed through the device with the
// wanted ones (the union of all peers' AllowedIPs). Both results are
// sorted.
func planRoutes(current, wanted []netip.Prefix) (add, del []netip.Prefix) {
	have := make(map[netip.Prefix]bool, len(current))
	for _, p := range current {
		have[canonicalPrefix(p)] = true
	}
	want := make(map[netip.Prefix]bool, len(wanted))
	for _, p := range wanted {
		p = canonicalPrefix(p)
		if want[p] {
			continue
		}
		want[p] = true
		if !have[p] {
			add = append(add, p)
		}
	}
	for p := range have {
		if !want[p] {
			del = append(del, p)
		}
	}
	slices.SortFunc(add, comparePrefix)
	slices.SortFunc(del, comparePrefix)
	return add, del
}

// routedPrefixes is the union of the peers' AllowedIPs.
func routedPrefixes(peers []peerState) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range peers {
		out = append(out, p.allowedIPs...)
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func canonicalPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	bits := p.Bits()
	if a.Is4In6() {
		a, bits = a.Unmap(), max(bits-96, 0)
	}
	return netip.PrefixFrom(a, bits).Masked()
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
