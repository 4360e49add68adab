package protocol

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
)

// Node address types.
const (
	AddressInternalIP = "InternalIP"
	AddressExternalIP = "ExternalIP"
)

// NodeSourceCustomResource is the Source ClusterMesh exporters write.
const NodeSourceCustomResource = "custom-resource"

// Node is the value of cilium/state/nodes/v1/<cluster>/<node>. Field order
// and names are the protocol's.
type Node struct {
	Name                    string
	Cluster                 string
	IPAddresses             []NodeAddress
	IPv4AllocCIDR           *CIDR
	IPv4SecondaryAllocCIDRs []*CIDR
	IPv6AllocCIDR           *CIDR
	IPv6SecondaryAllocCIDRs []*CIDR
	IPv4HealthIP            string
	IPv6HealthIP            string
	IPv4IngressIP           string
	IPv6IngressIP           string
	ClusterID               uint32
	Source                  string
	EncryptionKey           uint8
	Labels                  map[string]string
	Annotations             map[string]string
	NodeIdentity            uint32
	WireguardPubKey         string
	BootID                  string
}

// NodeAddress is one address of a node.
type NodeAddress struct {
	Type string
	IP   netip.Addr
}

// CIDR is a prefix in the net.IPNet JSON shape: {"IP":"10.0.0.0","Mask":"<base64>"}.
type CIDR struct {
	IP   net.IP
	Mask net.IPMask
}

// NewCIDR converts a prefix to the wire shape, with a 4-byte mask for IPv4.
func NewCIDR(p netip.Prefix) *CIDR {
	p = p.Masked()
	bits := p.Addr().BitLen()
	return &CIDR{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

// Prefix converts the wire shape back to a prefix.
func (c *CIDR) Prefix() (netip.Prefix, error) {
	addr, ok := netip.AddrFromSlice(c.IP)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("CIDR address %v is not an IP address", []byte(c.IP))
	}
	addr = addr.Unmap()
	ones, bits := c.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, fmt.Errorf("CIDR mask %v is not a canonical mask", []byte(c.Mask))
	}
	if bits != addr.BitLen() {
		return netip.Prefix{}, fmt.Errorf("CIDR %s has a %d-bit mask", addr, bits)
	}
	return netip.PrefixFrom(addr, ones).Masked(), nil
}

// InternalIP returns the node's first InternalIP of the family of v4 (true
// for IPv4), or the zero Addr.
func (n *Node) InternalIP(v4 bool) netip.Addr {
	for _, a := range n.IPAddresses {
		if a.Type == AddressInternalIP && a.IP.Is4() == v4 {
			return a.IP
		}
	}
	return netip.Addr{}
}

// PodCIDRs returns the node's pod CIDRs, primary ones first.
func (n *Node) PodCIDRs() []netip.Prefix {
	var out []netip.Prefix
	add := func(cs ...*CIDR) {
		for _, c := range cs {
			if c == nil {
				continue
			}
			if p, err := c.Prefix(); err == nil {
				out = append(out, p)
			}
		}
	}
	add(n.IPv4AllocCIDR, n.IPv6AllocCIDR)
	add(n.IPv4SecondaryAllocCIDRs...)
	add(n.IPv6SecondaryAllocCIDRs...)
	return out
}

// Encode returns the node's JSON value.
func (n *Node) Encode() []byte { return mustMarshal(n) }

// DecodeNode decodes and validates a node key and value published by
// cluster (name and ID).
func DecodeNode(cluster string, clusterID uint32, key string, value []byte) (*Node, error) {
	keyCluster, name, err := ParseNodeKey(key)
	if err != nil {
		return nil, err
	}
	if keyCluster != cluster {
		return nil, fmt.Errorf("node key %q is outside cluster %q", key, cluster)
	}
	var n Node
	if err := json.Unmarshal(value, &n); err != nil {
		return nil, fmt.Errorf("decode node %q: %w", key, err)
	}
	switch {
	case n.Name != name:
		return nil, fmt.Errorf("node %q: value names node %q", key, n.Name)
	case n.Cluster != cluster:
		return nil, fmt.Errorf("node %q: value names cluster %q, not %q", key, n.Cluster, cluster)
	case n.ClusterID != clusterID:
		return nil, fmt.Errorf("node %q: value has cluster ID %d, not %d", key, n.ClusterID, clusterID)
	}
	for _, a := range n.IPAddresses {
		if !a.IP.IsValid() {
			return nil, fmt.Errorf("node %q: address of type %q has no IP", key, a.Type)
		}
	}
	for _, c := range append([]*CIDR{n.IPv4AllocCIDR, n.IPv6AllocCIDR}, append(n.IPv4SecondaryAllocCIDRs, n.IPv6SecondaryAllocCIDRs...)...) {
		if c == nil {
			continue
		}
		if _, err := c.Prefix(); err != nil {
			return nil, fmt.Errorf("node %q: %w", key, err)
		}
	}
	if n.IPv4AllocCIDR != nil && len(n.IPv4AllocCIDR.IP.To4()) == 0 {
		return nil, fmt.Errorf("node %q: IPv4AllocCIDR %v is not IPv4", key, n.IPv4AllocCIDR.IP)
	}
	if n.WireguardPubKey != "" {
		if err := ValidateWireGuardKey(n.WireguardPubKey); err != nil {
			return nil, fmt.Errorf("node %q: %w", key, err)
		}
	}
	return &n, nil
}

// ValidateWireGuardKey reports whether k is a base64-encoded 32-byte
// WireGuard public key.
func ValidateWireGuardKey(k string) error {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("WireGuard public key %q is not 32 bytes of base64", k)
	}
	return nil
}
