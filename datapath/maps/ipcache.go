package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// IPCacheEntry is what the datapath knows about an IP prefix.
type IPCacheEntry struct {
	Identity protocol.NumericIdentity
	// TunnelEndpoint is the IP of the node hosting the prefix; the zero
	// Addr means none.
	TunnelEndpoint netip.Addr
	ClusterID      uint16
	Flags          uint8 // IPCacheFlag*
}

func (e IPCacheEntry) value() IPCacheValue {
	return IPCacheValue{
		Identity:       uint32(e.Identity),
		TunnelEndpoint: AddrFrom(e.TunnelEndpoint),
		ClusterID:      e.ClusterID,
		Flags:          e.Flags,
	}
}

func entryOf(v IPCacheValue) IPCacheEntry {
	return IPCacheEntry{
		Identity:       protocol.NumericIdentity(v.Identity),
		TunnelEndpoint: v.TunnelEndpoint.Addr(),
		ClusterID:      v.ClusterID,
		Flags:          v.Flags,
	}
}

// IPCacheKeyOf returns the trie key for p (masked). An IPv4-mapped IPv6
// prefix is refused: write IPv4 prefixes in IPv4 form.
func IPCacheKeyOf(p netip.Prefix) (IPCacheKey, error) {
	if !p.IsValid() {
		return IPCacheKey{}, fmt.Errorf("ipcache prefix %v: invalid", p)
	}
	p = p.Masked()
	a := p.Addr()
	k := IPCacheKey{PrefixLen: uint32(IPCachePrefixBase + p.Bits())}
	switch {
	case a.Is4():
		k.Family = IPCacheFamilyIPv4
		a4 := a.As4()
		copy(k.Addr[:], a4[:])
	case a.Is4In6():
		return IPCacheKey{}, fmt.Errorf("ipcache prefix %v: IPv4-mapped; write IPv4 prefixes in IPv4 form", p)
	default:
		k.Family = IPCacheFamilyIPv6
		k.Addr = a.As16()
	}
	return k, nil
}

// ipcacheLookupKey is the key the programs look an address up with.
func ipcacheLookupKey(a netip.Addr) IPCacheKey {
	a = a.Unmap()
	if a.Is4() {
		k := IPCacheKey{PrefixLen: IPCachePrefixBase + 32, Family: IPCacheFamilyIPv4}
		a4 := a.As4()
		copy(k.Addr[:], a4[:])
		return k
	}
	return IPCacheKey{PrefixLen: IPCachePrefixBase + 128, Family: IPCacheFamilyIPv6, Addr: a.As16()}
}

// Prefix converts a trie key back into a prefix.
func (k IPCacheKey) Prefix() netip.Prefix {
	bits := int(k.PrefixLen) - IPCachePrefixBase
	if k.Family == IPCacheFamilyIPv4 {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), bits)
	}
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits)
}

// IPCache is the isthmus_ipcache LPM trie: IPv4 and IPv6 prefixes to
// identity, tunnel endpoint and cluster. Safe for concurrent use.
type IPCache struct {
	m *ebpf.Map
}

// Map returns the underlying map.
func (c *IPCache) Map() *ebpf.Map { return c.m }

// Upsert adds or replaces the entry for p.
func (c *IPCache) Upsert(p netip.Prefix, e IPCacheEntry) error {
	k, err := IPCacheKeyOf(p)
	if err != nil {
		return err
	}
	if err := c.m.Put(k, e.value()); err != nil {
		return fmt.Errorf("ipcache upsert %v: %w", p, explainWrite(c.m, err))
	}
	return nil
}

// Delete removes the entry for exactly p; an absent entry is not an error.
func (c *IPCache) Delete(p netip.Prefix) error {
	k, err := IPCacheKeyOf(p)
	if err != nil {
		return err
	}
	if err := c.m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ipcache delete %v: %w", p, err)
	}
	return nil
}

// Lookup returns the entry of the longest prefix containing a, as the
// programs see it.
func (c *IPCache) Lookup(a netip.Addr) (IPCacheEntry, bool, error) {
	if !a.IsValid() {
		return IPCacheEntry{}, false, fmt.Errorf("ipcache lookup: invalid address")
	}
	var v IPCacheValue
	err := c.m.Lookup(ipcacheLookupKey(a), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return IPCacheEntry{}, false, nil
	}
	if err != nil {
		return IPCacheEntry{}, false, fmt.Errorf("ipcache lookup %v: %w", a, err)
	}
	return entryOf(v), true, nil
}

// Dump returns every entry.
func (c *IPCache) Dump() (map[netip.Prefix]IPCacheEntry, error) {
	raw, err := Dump[IPCacheKey, IPCacheValue](c.m)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Prefix]IPCacheEntry, len(raw))
	for k, v := range raw {
		out[k.Prefix()] = entryOf(v)
	}
	return out, nil
}

// Reconcile makes the ipcache hold exactly desired, writing only the
// differences. An invalid prefix is skipped, reported in the returned
// InvalidEntries error and counted in Stats.Failed; the rest still lands.
func (c *IPCache) Reconcile(desired map[netip.Prefix]IPCacheEntry) (Stats, error) {
	raw := make(map[IPCacheKey]IPCacheValue, len(desired))
	var bad []error
	for p, e := range desired {
		k, err := IPCacheKeyOf(p)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		raw[k] = e.value()
	}
	st, err := Reconcile(c.m, raw)
	st.Failed += len(bad)
	if len(bad) > 0 {
		err = errors.Join(err, &InvalidEntriesError{Map: NameIPCache, Errs: bad})
	}
	return st, err
}

// InvalidEntriesError lists desired entries that were skipped because they
// were invalid; everything else was written.
type InvalidEntriesError struct {
	Map  string
	Errs []error
}

func (e *InvalidEntriesError) Error() string {
	const show = 3
	msg := fmt.Sprintf("%s: skipped %d invalid entries", e.Map, len(e.Errs))
	for i, err := range e.Errs {
		if i == show {
			msg += fmt.Sprintf("; and %d more", len(e.Errs)-show)
			break
		}
		msg += "; " + err.Error()
	}
	return msg
}

func (e *InvalidEntriesError) Unwrap() []error { return e.Errs }
