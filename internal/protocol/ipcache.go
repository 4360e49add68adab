package protocol

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
)

// IPCacheEntry is the value of cilium/state/ip/v1/default/<ip>: which
// identity a pod IP has and which node hosts it. Field order and names are
// the protocol's.
type IPCacheEntry struct {
	IP           netip.Addr
	Mask         net.IPMask
	HostIP       netip.Addr
	ID           NumericIdentity
	Key          uint8
	Metadata     string
	K8sNamespace string
	K8sPodName   string
}

// Encode returns the entry's JSON value.
func (e *IPCacheEntry) Encode() []byte { return mustMarshal(e) }

// Prefix returns the prefix the entry covers: the IP with its mask, or a
// host prefix when the mask is absent.
func (e *IPCacheEntry) Prefix() netip.Prefix {
	if e.Mask != nil {
		if ones, bits := e.Mask.Size(); bits == e.IP.BitLen() {
			return netip.PrefixFrom(e.IP, ones).Masked()
		}
	}
	return netip.PrefixFrom(e.IP, e.IP.BitLen())
}

// DecodeIPCacheEntry decodes and validates an ipcache key and value
// published by cluster clusterID.
func DecodeIPCacheEntry(clusterID, maxConnected uint32, key string, value []byte) (*IPCacheEntry, error) {
	addr, err := ParseIPCacheKey(key)
	if err != nil {
		return nil, err
	}
	var e IPCacheEntry
	if err := json.Unmarshal(value, &e); err != nil {
		return nil, fmt.Errorf("decode ipcache entry %q: %w", key, err)
	}
	e.IP = e.IP.Unmap()
	e.HostIP = e.HostIP.Unmap()
	switch {
	case e.IP != addr.Unmap():
		return nil, fmt.Errorf("ipcache entry %q: value IP %s does not match the key", key, e.IP)
	case e.Mask != nil && !validMask(e.Mask, e.IP):
		return nil, fmt.Errorf("ipcache entry %q: mask %v does not fit %s", key, []byte(e.Mask), e.IP)
	}
	if err := ValidateIdentityCluster(e.ID, clusterID, maxConnected); err != nil {
		return nil, fmt.Errorf("ipcache entry %q: %w", key, err)
	}
	return &e, nil
}

func validMask(m net.IPMask, ip netip.Addr) bool {
	_, bits := m.Size()
	return bits != 0 && bits == ip.BitLen()
}
