package maps

import (
	"net/netip"
)

// The types below mirror the C structs in
// datapath/bpf/include/isthmus/maps.h field by field: same order, same sizes,
// explicit padding (always zero), no implicit padding. cilium/ebpf encodes
// them in host byte order, which is what the C side reads for every integer.
// Addresses are the exception: [Addr16] holds network byte order.
// TestLayoutsMatchBTF checks every type against the compiled object's BTF, so
// the two cannot drift apart.
//
// Reading `bpftool map dump pinned <root>/<map>` output: bpftool prints these
// structs by field name (the maps carry BTF); addresses appear as 16 bytes,
// IPv4 as 00 .. 00 ff ff a b c d; ports and identities as plain numbers.

// Map names: the C names, the kernel's names (bpftool map list) and the pin
// file names under the root directory.
const (
	NameIPCache     = "isthmus_ipcache"
	NameIPHosts     = "isthmus_iphosts"
	NameFrontends   = "isthmus_lb_fe"
	NameSlots       = "isthmus_lb_slot"
	NameBackends    = "isthmus_lb_be"
	NameRevNAT      = "isthmus_lb_rnat"
	NamePolicy      = "isthmus_policy"
	NameEnforcement = "isthmus_pol_enf"
	NameConfig      = "isthmus_config"
	NameCT          = "isthmus_ct"
	NameFlows       = "isthmus_flows"
	NameMetrics     = "isthmus_metrics"
)

// Addr16 is an address as every map stores it: 16 bytes in network byte
// order, IPv4 mapped into IPv6 (::ffff:a.b.c.d). The zero value means "no
// address".
type Addr16 [16]byte

// AddrFrom converts a to the map form. An invalid a gives the zero Addr16.
func AddrFrom(a netip.Addr) Addr16 {
	if !a.IsValid() {
		return Addr16{}
	}
	return Addr16(a.As16())
}

// Addr converts back, unmapping IPv4; the zero Addr16 gives the invalid Addr.
func (a Addr16) Addr() netip.Addr {
	if a == (Addr16{}) {
		return netip.Addr{}
	}
	return netip.AddrFrom16(a).Unmap()
}

// String formats the address, or "-" for none.
func (a Addr16) String() string {
	if ad := a.Addr(); ad.IsValid() {
		return ad.String()
	}
	return "-"
}

// IPCacheKey is the key of isthmus_ipcache (LPM trie) and of
// isthmus_iphosts (hash, host entries only, PrefixLen 64 or 160), 24 bytes:
//
//	off size field
//	0   4    PrefixLen  32 + prefix length: the family and pad bits always match
//	4   1    Family     4 (IPv4) or 6 (IPv6); keeps ::/0 from matching IPv4
//	5   3    Pad
//	8   16   Addr       network order; IPv4 in Addr[0:4], the rest zero
//
// So an IPv4 /24 has PrefixLen 56 and an IPv6 /64 has 96; lookups use 64 for
// IPv4 and 160 for IPv6. Unlike elsewhere, IPv4 is not IPv4-mapped here.
type IPCacheKey struct {
	PrefixLen uint32
	Family    uint8
	Pad       [3]uint8
	Addr      [16]byte
}

// IPCache key families and the fixed prefix bits (IPCacheKey).
const (
	IPCacheFamilyIPv4 uint8 = 4
	IPCacheFamilyIPv6 uint8 = 6
	IPCachePrefixBase       = 32
)

// IPCache flags (IPCacheValue.Flags).
const (
	// IPCacheFlagLocalNode marks an endpoint that lives on this node.
	IPCacheFlagLocalNode uint8 = 1 << 0
	// IPCacheFlagNode marks a node's own address.
	IPCacheFlagNode uint8 = 1 << 1
)

// IPCacheValue is the value of isthmus_ipcache and isthmus_iphosts, 24
// bytes:
//
//	off size field
//	0   4    Identity        numeric security identity
//	4   16   TunnelEndpoint  node IP hosting the prefix, IPv4-mapped; zero = none
//	20  2    ClusterID
//	22  1    Flags           IPCacheFlag*
//	23  1    Pad
type IPCacheValue struct {
	Identity       uint32
	TunnelEndpoint Addr16
	ClusterID      uint16
	Flags          uint8
	Pad            uint8
}

// FrontendKey is the key of isthmus_lb_fe, 20 bytes:
//
//	off size field
//	0   16   Addr   service address (ClusterIP), network order, IPv4-mapped
//	16  2    Port   host order
//	18  1    Proto  6 TCP, 17 UDP
//	19  1    Pad
type FrontendKey struct {
	Addr  Addr16
	Port  uint16
	Proto uint8
	Pad   uint8
}

// FrontendValue is the value of isthmus_lb_fe, 12 bytes:
//
//	off size field
//	0   4    ServiceID
//	4   2    BackendCount       slots 0..BackendCount-1 are in use
//	6   2    LocalBackendCount  slots 0..LocalBackendCount-1 hold local-cluster backends
//	8   1    Affinity           0 none, 1 local, 2 remote
//	9   1    Flags              reserved, zero
//	10  2    Pad
type FrontendValue struct {
	ServiceID         uint32
	BackendCount      uint16
	LocalBackendCount uint16
	Affinity          uint8
	Flags             uint8
	Pad               uint16
}

// SlotKey is the key of isthmus_lb_slot, 8 bytes: ServiceID (0), Slot (4).
type SlotKey struct {
	ServiceID uint32
	Slot      uint32
}

// SlotValue is the value of isthmus_lb_slot, 4 bytes: the backend ID.
type SlotValue struct {
	BackendID uint32
}

// BackendFlagLocal marks a backend in the local cluster (BackendValue.Flags).
const BackendFlagLocal uint8 = 1 << 0

// BackendValue is the value of isthmus_lb_be (key: uint32 backend ID), 24
// bytes:
//
//	off size field
//	0   16   Addr       network order, IPv4-mapped
//	16  2    Port       host order
//	18  2    ClusterID
//	20  1    Flags      BackendFlagLocal
//	21  3    Pad
type BackendValue struct {
	Addr      Addr16
	Port      uint16
	ClusterID uint16
	Flags     uint8
	Pad       [3]uint8
}

// RevNATKey is the key of isthmus_lb_rnat (LRU), 32 bytes:
//
//	off size field
//	0   8    Cookie  socket cookie
//	8   16   Addr    backend address, network order, IPv4-mapped
//	24  2    Port    backend port, host order
//	26  6    Pad, Pad2
type RevNATKey struct {
	Cookie uint64
	Addr   Addr16
	Port   uint16
	Pad    uint16
	Pad2   uint32
}

// RevNATValue is the value of isthmus_lb_rnat, 24 bytes:
//
//	off size field
//	0   16   Addr       service address, network order, IPv4-mapped
//	16  2    Port       service port, host order
//	18  2    Pad
//	20  4    ServiceID
type RevNATValue struct {
	Addr      Addr16
	Port      uint16
	Pad       uint16
	ServiceID uint32
}

// PolicyKey is the key of isthmus_policy, 12 bytes:
//
//	off size field
//	0   4    LocalIdentity
//	4   4    RemoteIdentity  0 = any
//	8   2    DPort           host order, 0 = any
//	10  1    Proto           0 = any
//	11  1    Direction       1 ingress, 2 egress
//
// See Policy for the lookup order.
type PolicyKey struct {
	LocalIdentity  uint32
	RemoteIdentity uint32
	DPort          uint16
	Proto          uint8
	Direction      uint8
}

// PolicyValue is the value of isthmus_policy, 8 bytes:
//
//	off size field
//	0   1    Verdict  1 allow, 2 deny
//	1   3    Pad
//	4   4    RuleID   opaque, reported in flow events
type PolicyValue struct {
	Verdict uint8
	Pad     [3]uint8
	RuleID  uint32
}

// PolicyEnforcement is the value of isthmus_pol_enf (key: uint32 local
// identity), 4 bytes: Ingress (0) and Egress (1) are 1 when some policy
// selects the identity in that direction; 2 bytes Pad.
type PolicyEnforcement struct {
	Ingress uint8
	Egress  uint8
	Pad     [2]uint8
}

// MeshConfig is the single value of isthmus_config (key: uint32 0), 8 bytes:
//
//	off size field
//	0   1    DefaultDeny     1 = drop for endpoints no policy selects
//	1   1    FlowEventsOff   bit 0: no drop events, bit 1: no new-flow events
//	2   2    ClusterID       this cluster's ID
//	4   4    PolicyRevision  flows tracked under another revision are re-checked
type MeshConfig struct {
	DefaultDeny    uint8
	FlowEventsOff  uint8
	ClusterID      uint16
	PolicyRevision uint32
}

// CTKey is the key of isthmus_ct (LRU), 40 bytes: a flow as first seen.
//
//	off size field
//	0   16   SAddr
//	16  16   DAddr
//	32  2    SPort      host order; ICMP echo: the identifier
//	34  2    DPort      host order; ICMP echo: the identifier
//	36  1    Proto
//	37  1    Direction  of the packet that created the entry
//	38  2    Pad
type CTKey struct {
	SAddr     Addr16
	DAddr     Addr16
	SPort     uint16
	DPort     uint16
	Proto     uint8
	Direction uint8
	Pad       uint16
}

// CTValue is the value of isthmus_ct, 16 bytes: LastSeenNs (0, monotonic
// clock, refreshed at most once a second), PolicyRevision (8) when the flow
// was last checked, RuleID (12) of the entry that allowed it.
type CTValue struct {
	LastSeenNs     uint64
	PolicyRevision uint32
	RuleID         uint32
}

// MetricValue is the per-CPU value of isthmus_metrics (key: uint32 reason),
// 16 bytes: Packets (0) and Bytes (8).
type MetricValue struct {
	Packets uint64
	Bytes   uint64
}

// FlowRecord is one record on the isthmus_flows ring buffer, 72 bytes:
//
//	off size field
//	0   8    TimestampNs  monotonic clock
//	8   16   SAddr
//	24  16   DAddr
//	40  2    SPort        host order
//	42  2    DPort        host order
//	44  1    Proto
//	45  1    Direction    1 ingress, 2 egress
//	46  1    Verdict      1 forwarded, 2 dropped
//	47  1    Reason
//	48  4    SrcIdentity
//	52  4    DstIdentity
//	56  2    SrcCluster
//	58  2    DstCluster
//	60  4    Ifindex
//	64  4    RuleID
//	68  4    PktLen
type FlowRecord struct {
	TimestampNs uint64
	SAddr       Addr16
	DAddr       Addr16
	SPort       uint16
	DPort       uint16
	Proto       uint8
	Direction   uint8
	Verdict     uint8
	Reason      uint8
	SrcIdentity uint32
	DstIdentity uint32
	SrcCluster  uint16
	DstCluster  uint16
	Ifindex     uint32
	RuleID      uint32
	PktLen      uint32
}
