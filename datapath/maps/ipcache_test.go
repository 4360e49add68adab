package maps

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

func TestIPCacheKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"10.1.2.0/24", "10.1.2.3/32", "0.0.0.0/0", "fd00:1::/64", "::/0", "2001:db8::1/128"} {
		p := netip.MustParsePrefix(s)
		k, err := IPCacheKeyOf(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := k.Prefix(); got != p {
			t.Errorf("%s: round trip gave %s", p, got)
		}
	}
	k, _ := IPCacheKeyOf(netip.MustParsePrefix("10.1.2.3/24"))
	if k.PrefixLen != 56 || k.Family != IPCacheFamilyIPv4 || k.Addr != [16]byte{10, 1, 2} {
		t.Errorf("10.1.2.3/24 -> %+v, want masked IPv4 key with prefixlen 56", k)
	}
	if _, err := IPCacheKeyOf(netip.MustParsePrefix("::ffff:10.0.0.0/104")); err == nil {
		t.Error("IPv4-mapped prefix accepted")
	}
	if _, err := IPCacheKeyOf(netip.Prefix{}); err == nil {
		t.Error("invalid prefix accepted")
	}
}

func TestIPCacheLongestPrefixMatch(t *testing.T) {
	m := openMaps(t, smallConfig(bpffstest.PinRoot(t)))
	entries := map[string]protocol.NumericIdentity{
		"10.0.0.0/8":      1001,
		"10.1.0.0/16":     1002,
		"10.1.2.0/24":     1003,
		"10.1.2.3/32":     1004,
		"fd00::/8":        2001,
		"fd00:1::/32":     2002,
		"fd00:1:2::/48":   2003,
		"fd00:1:2::7/128": 2004,
	}
	desired := map[netip.Prefix]IPCacheEntry{}
	for p, id := range entries {
		desired[mustPrefix(t, p)] = IPCacheEntry{Identity: id, ClusterID: uint16(id / 1000)}
	}
	if _, err := m.IPCache.Reconcile(desired); err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]protocol.NumericIdentity{
		"10.1.2.3":        1004,
		"10.1.2.4":        1003,
		"10.1.3.1":        1002,
		"10.200.0.1":      1001,
		"11.0.0.1":        0,
		"fd00:1:2::7":     2004,
		"fd00:1:2::8":     2003,
		"fd00:1:3::1":     2002,
		"fd99::1":         2001,
		"fe80::1":         0,
		"::ffff:10.1.2.3": 1004, // mapped form looks up the IPv4 entry
	} {
		got, ok, err := m.IPCache.Lookup(netip.MustParseAddr(addr))
		if err != nil {
			t.Fatal(err)
		}
		if want == 0 {
			if ok {
				t.Errorf("%s matched %+v, want no entry", addr, got)
			}
			continue
		}
		if !ok || got.Identity != want {
			t.Errorf("%s -> %v (found %v), want %v", addr, got.Identity, ok, want)
		}
	}

	// Host entries live in the hash, the rest in the trie.
	for _, m := range []struct {
		name string
		host bool
		want int
		dump func() (map[IPCacheKey]IPCacheValue, error)
	}{
		{"trie", false, 6, func() (map[IPCacheKey]IPCacheValue, error) { return Dump[IPCacheKey, IPCacheValue](m.IPCache.Map()) }},
		{"hosts", true, 2, func() (map[IPCacheKey]IPCacheValue, error) {
			return Dump[IPCacheKey, IPCacheValue](m.IPCache.HostsMap())
		}},
	} {
		raw, err := m.dump()
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) != m.want {
			t.Errorf("%s holds %d entries, want %d", m.name, len(raw), m.want)
		}
		for k := range raw {
			if k.IsHost() != m.host {
				t.Errorf("%s holds %v", m.name, k.Prefix())
			}
		}
	}

	// ::/0 must not catch IPv4 addresses: the family byte keeps them apart.
	if err := m.IPCache.Upsert(mustPrefix(t, "::/0"), IPCacheEntry{Identity: protocol.IdentityWorld}); err != nil {
		t.Fatal(err)
	}
	if got, ok, _ := m.IPCache.Lookup(netip.MustParseAddr("11.0.0.1")); ok {
		t.Errorf("IPv4 address matched ::/0: %+v", got)
	}
	if got, ok, _ := m.IPCache.Lookup(netip.MustParseAddr("2001:db8::1")); !ok || got.Identity != protocol.IdentityWorld {
		t.Errorf("2001:db8::1 -> %+v %v, want world from ::/0", got, ok)
	}

	// Deleting the /32 exposes the /24 again.
	if err := m.IPCache.Delete(mustPrefix(t, "10.1.2.3/32")); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := m.IPCache.Lookup(netip.MustParseAddr("10.1.2.3")); got.Identity != 1003 {
		t.Errorf("after delete 10.1.2.3 -> %v, want 1003", got.Identity)
	}
	if err := m.IPCache.Delete(mustPrefix(t, "10.1.2.3/32")); err != nil {
		t.Errorf("deleting an absent prefix: %v", err)
	}
}

func TestIPCacheReconcileSkipsInvalid(t *testing.T) {
	m := openMaps(t, smallConfig(bpffstest.PinRoot(t)))
	st, err := m.IPCache.Reconcile(map[netip.Prefix]IPCacheEntry{
		mustPrefix(t, "10.0.0.0/8"): {Identity: 300},
		{}:                          {Identity: 301},
	})
	var inv *InvalidEntriesError
	if !errors.As(err, &inv) || len(inv.Errs) != 1 {
		t.Fatalf("error %v, want one invalid entry", err)
	}
	if st.Added != 1 || st.Failed != 1 {
		t.Fatalf("stats %+v, want the valid entry added and one failed", st)
	}
}
