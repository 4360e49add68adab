package wireguard

// Encapsulation overhead of WireGuard: outer IP header, UDP header (8) and
// WireGuard's data header (type and reserved 4, receiver index 4, counter
// 8) plus the Poly1305 tag (16).
const (
	overheadIPv4 = 20 + 8 + 32
	overheadIPv6 = 40 + 8 + 32
)

// defaultUnderlayMTU is assumed when no underlay device can be found.
const defaultUnderlayMTU = 1500

// minUnderlayMTU is the smallest Config.UnderlayMTU accepted: IPv6's
// minimum link MTU. Note that the tunnel MTU must itself be at least 1280
// for IPv6 AllowedIPs: below it the kernel disables IPv6 on the device.
const minUnderlayMTU = 1280

// underlayPath is the way the tunnel's packets take to one peer, or to
// the default route before there is a peer.
type underlayPath struct {
	mtu  int
	ipv6 bool // outer packets are IPv6
}

// tunnelMTU is the MTU of the tunnel device for its underlay paths: the
// lowest of their MTUs less the encapsulation overhead of their family.
// With no path it assumes a 1500-byte IPv6 path, the larger overhead,
// which gives wg-quick's default of 1420.
func tunnelMTU(paths []underlayPath) int {
	if len(paths) == 0 {
		paths = []underlayPath{{mtu: defaultUnderlayMTU, ipv6: true}}
	}
	best := 0
	for _, p := range paths {
		m := p.mtu - overheadIPv4
		if p.ipv6 {
			m = p.mtu - overheadIPv6
		}
		if best == 0 || m < best {
			best = m
		}
	}
	return best
}
