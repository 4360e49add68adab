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

// IsHost reports whether k is a host entry (/32 or /128), which lives in
// isthmus_iphosts rather than the trie.
func (k IPCacheKey) IsHost() bool {
	return k.Family == IPCacheFamilyIPv4 && k.PrefixLen == IPCachePrefixBase+32 ||
		k.Family == IPCacheFamilyIPv6 && k.PrefixLen == IPCachePrefixBase+128
}

// IPCache maps IPv4 and IPv6 prefixes to identity, tunnel endpoint and
// cluster. It is two maps with one key layout: host entries (/32, /128) in
// the isthmus_iphosts hash and every other prefix in the isthmus_ipcache LPM
// trie; the programs try the hash first. Callers see one longest-prefix
// table. Safe for concurrent use.
type IPCache struct {
	trie, hosts *ebpf.Map
}

// Map returns the LPM trie (prefixes shorter than a host).
func (c *IPCache) Map() *ebpf.Map { return c.trie }

// HostsMap returns the hash of host entries.
func (c *IPCache) HostsMap() *ebpf.Map { return c.hosts }

func (c *IPCache) mapFor(k IPCacheKey) *ebpf.Map {
	if k.IsHost() {
		return c.hosts
	}
	return c.trie
}

// Upsert adds or replaces the entry for p.
func (c *IPCache) Upsert(p netip.Prefix, e IPCacheEntry) error {
	k, err := IPCacheKeyOf(p)
	if err != nil {
		return err
	}
	m := c.mapFor(k)
	if err := m.Put(k, e.value()); err != nil {
		return fmt.Errorf("ipcache upsert %v: %w", p, explainWrite(m, err))
	}
	return nil
}

// Delete removes the entry for exactly p; an absent entry is not an error.
func (c *IPCache) Delete(p netip.Prefix) error {
	k, err := IPCacheKeyOf(p)
	if err != nil {
		return err
	}
	if err := c.mapFor(k).Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
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
	k := ipcacheLookupKey(a)
	for _, m := range []*ebpf.Map{c.hosts, c.trie} {
		var v IPCacheValue
		err := m.Lookup(k, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			return IPCacheEntry{}, false, fmt.Errorf("ipcache lookup %v: %w", a, err)
		}
		return entryOf(v), true, nil
	}
	return IPCacheEntry{}, false, nil
}

// Dump returns every entry.
func (c *IPCache) Dump() (map[netip.Prefix]IPCacheEntry, error) {
	out := make(map[netip.Prefix]IPCacheEntry)
	for _, m := range []*ebpf.Map{c.trie, c.hosts} {
		raw, err := Dump[IPCacheKey, IPCacheValue](m)
		if err != nil {
			return nil, err
		}
		for k, v := range raw {
			out[k.Prefix()] = entryOf(v)
		}
	}
	return out, nil
}

// Reconcile makes the ipcache hold exactly desired, writing only the
// differences to each of its two maps. An invalid prefix is skipped,
// reported in the returned InvalidEntriesError and counted in Stats.Failed;
// the rest still lands.
func (c *IPCache) Reconcile(desired map[netip.Prefix]IPCacheEntry) (Stats, error) {
	hosts := make(map[IPCacheKey]IPCacheValue, len(desired))
	prefixes := make(map[IPCacheKey]IPCacheValue)
	var bad []error
	for p, e := range desired {
		k, err := IPCacheKeyOf(p)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		if k.IsHost() {
			hosts[k] = e.value()
		} else {
			prefixes[k] = e.value()
		}
	}
	// Hosts first: a new pod is found before the prefix covering it goes.
	st, herr := Reconcile(c.hosts, hosts)
	pst, perr := Reconcile(c.trie, prefixes)
	st.add(pst)
	err := errors.Join(herr, perr)
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
