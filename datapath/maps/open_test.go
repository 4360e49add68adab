package maps

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

func TestOpenCreatesPinsAndReusesThem(t *testing.T) {
	root := bpffstest.PinRoot(t)
	cfg := smallConfig(root)
	m1 := openMaps(t, cfg)
	if got := m1.Recreated(); len(got) != 0 {
		t.Fatalf("fresh Open recreated %v", got)
	}
	for _, name := range []string{NameIPCache, NameIPHosts, NameFrontends, NameSlots, NameBackends, NameRevNAT,
		NamePolicy, NameEnforcement, NameConfig, NameCT, NameFlows, NameMetrics} {
		if _, err := os.Stat(filepath.Join(root, name)); err != nil {
			t.Errorf("pin of %s: %v", name, err)
		}
	}
	if got := m1.IPCache.Map().MaxEntries(); got != cfg.IPCacheMaxEntries {
		t.Errorf("ipcache max entries %d, want %d", got, cfg.IPCacheMaxEntries)
	}

	p := mustPrefix(t, "10.20.0.0/16")
	want := IPCacheEntry{Identity: 70000, TunnelEndpoint: netip.MustParseAddr("192.168.1.2"), ClusterID: 3}
	if err := m1.IPCache.Upsert(p, want); err != nil {
		t.Fatal(err)
	}

	// A second handle, as after an agent restart, finds the same map.
	m2 := openMaps(t, cfg)
	if got := m2.Recreated(); len(got) != 0 {
		t.Fatalf("reopen recreated %v", got)
	}
	got, ok, err := m2.IPCache.Lookup(netip.MustParseAddr("10.20.3.4"))
	if err != nil || !ok || got != want {
		t.Fatalf("lookup through the second handle: %+v %v %v, want %+v", got, ok, err, want)
	}
	id1 := mapID(t, m1.IPCache.Map())
	if id2 := mapID(t, m2.IPCache.Map()); id1 != id2 {
		t.Fatalf("reopened map has ID %d, original %d", id2, id1)
	}

	// Closing every handle leaves the pinned map alive.
	m1.Close()
	m2.Close()
	m3 := openMaps(t, cfg)
	if _, ok, _ := m3.IPCache.Lookup(netip.MustParseAddr("10.20.3.4")); !ok {
		t.Fatal("entry lost after closing all handles")
	}
	if err := m3.Unpin(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("root still there after Unpin: %v", err)
	}
}

func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("kernel reports no map ID")
	}
	return id
}

func TestOpenRecreatesResizedMapAndMigrates(t *testing.T) {
	root := bpffstest.PinRoot(t)
	cfg := smallConfig(root)
	m1 := openMaps(t, cfg)
	for i := range 10 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24)
		if err := m1.IPCache.Upsert(p, IPCacheEntry{Identity: 301}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 { // host entries: the other half of the ipcache
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), 32)
		if err := m1.IPCache.Upsert(p, IPCacheEntry{Identity: 302}); err != nil {
			t.Fatal(err)
		}
	}
	oldID := mapID(t, m1.IPCache.Map())
	m1.Close()

	cfg.IPCacheMaxEntries = 4096
	m2 := openMaps(t, cfg)
	rec := m2.Recreated()
	if len(rec) != 2 || rec[0].Name != NameIPCache || rec[0].Migrated != 10 || rec[0].Lost != 0 ||
		rec[1].Name != NameIPHosts || rec[1].Migrated != 5 {
		t.Fatalf("Recreated = %+v, want ipcache with 10 and iphosts with 5 migrated", rec)
	}
	if !strings.Contains(rec[0].Reason, "MaxEntries") {
		t.Errorf("reason %q does not name the size", rec[0].Reason)
	}
	if got := m2.IPCache.Map().MaxEntries(); got != 4096 {
		t.Fatalf("max entries %d after recreation", got)
	}
	if mapID(t, m2.IPCache.Map()) == oldID {
		t.Fatal("same map ID: not recreated")
	}
	// The pin now names the new map.
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(root, NameIPCache), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if mapID(t, pinned) != mapID(t, m2.IPCache.Map()) {
		t.Fatal("pin does not name the recreated map")
	}
	if _, err := os.Stat(filepath.Join(root, NameIPCache+"_new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary pin left behind: %v", err)
	}
	all, err := m2.IPCache.Dump()
	if err != nil || len(all) != 15 {
		t.Fatalf("dump after migration: %d entries, %v", len(all), err)
	}
}

func TestOpenRefusesIncompatibleWhenAsked(t *testing.T) {
	root := bpffstest.PinRoot(t)
	cfg := smallConfig(root)
	openMaps(t, cfg).Close()

	cfg.PolicyMaxEntries *= 2
	cfg.RefuseIncompatible = true
	_, err := Open(cfg)
	if !errors.Is(err, ErrIncompatiblePin) {
		t.Fatalf("Open = %v, want ErrIncompatiblePin", err)
	}
	if !strings.Contains(err.Error(), NamePolicy) || !strings.Contains(err.Error(), "remove the pin") {
		t.Errorf("error does not say which map and what to do: %v", err)
	}
}

// TestOpenRecreatesOnLayoutChange pins a map with the right sizes but a
// different key layout (as an older build might have left) and expects Open
// to notice through BTF and replace it without migrating.
func TestOpenRecreatesOnLayoutChange(t *testing.T) {
	root := bpffstest.PinRoot(t)
	cfg := smallConfig(root)
	spec, err := loadMapdefs()
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps[NamePolicy].Copy()
	ms.MaxEntries = cfg.PolicyMaxEntries
	u32 := &btf.Int{Name: "u32", Size: 4}
	u8 := &btf.Int{Name: "u8", Size: 1}
	u16 := &btf.Int{Name: "u16", Size: 2}
	// Same size (12 bytes), remote identity first.
	ms.Key = &btf.Struct{Name: "policy_key", Size: 12, Members: []btf.Member{
		{Name: "remote_identity", Type: u32, Offset: 0},
		{Name: "local_identity", Type: u32, Offset: 32},
		{Name: "dport", Type: u16, Offset: 64},
		{Name: "proto", Type: u8, Offset: 80},
		{Name: "direction", Type: u8, Offset: 88},
	}}
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Put(PolicyKey{LocalIdentity: 1, Direction: 1}, PolicyValue{Verdict: 1}); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(root, NamePolicy)); err != nil {
		t.Fatal(err)
	}

	m := openMaps(t, cfg)
	rec := m.Recreated()
	if len(rec) != 1 || rec[0].Name != NamePolicy || rec[0].Migrated != 0 {
		t.Fatalf("Recreated = %+v, want policy recreated without migration", rec)
	}
	if !strings.Contains(rec[0].Reason, "layout of struct policy_key changed") {
		t.Errorf("reason %q does not explain the layout change", rec[0].Reason)
	}
	if mapID(t, m.Policy.Map()) == mapID(t, old) {
		t.Fatal("old map reused")
	}
}

// TestBpftoolDumpPinned runs bpftool on the pins: the output must parse as
// JSON and show the fields by name, which is what BTF buys.
func TestBpftoolDumpPinned(t *testing.T) {
	root := bpffstest.PinRoot(t)
	bpftool, err := exec.LookPath("bpftool")
	if err != nil {
		privileged.Unavailable(t, "bpftool is not installed (Debian package bpftool)")
	}
	m := openMaps(t, smallConfig(root))
	if err := m.IPCache.Upsert(mustPrefix(t, "10.1.0.0/16"), IPCacheEntry{Identity: 196864, ClusterID: 3}); err != nil {
		t.Fatal(err)
	}
	if err := m.Services.Upsert(Service{
		Frontend: Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: ProtoTCP},
		Affinity: AffinityLocal,
		Backends: []Backend{{Addr: netip.MustParseAddr("10.1.2.3"), Port: 8080, ClusterID: 3, Local: true}},
	}); err != nil {
		t.Fatal(err)
	}

	type entry struct {
		Formatted struct {
			Key   map[string]any `json:"key"`
			Value map[string]any `json:"value"`
		} `json:"formatted"`
	}
	dump := func(name string) []entry {
		out, err := exec.Command(bpftool, "--json", "map", "dump", "pinned", filepath.Join(root, name)).Output()
		if err != nil {
			t.Fatalf("bpftool map dump %s: %v", name, err)
		}
		var es []entry
		if err := json.Unmarshal(out, &es); err != nil {
			t.Fatalf("bpftool output for %s does not parse: %v\n%s", name, err, out)
		}
		return es
	}

	es := dump(NameIPCache)
	if len(es) != 1 {
		t.Fatalf("ipcache dump has %d entries", len(es))
	}
	if got := es[0].Formatted.Key["prefixlen"]; got != float64(32+16) {
		t.Errorf("prefixlen = %v, want 48", got)
	}
	if got := es[0].Formatted.Value["identity"]; got != float64(196864) {
		t.Errorf("identity = %v, want 196864", got)
	}
	fe := dump(NameFrontends)
	if len(fe) != 1 || fe[0].Formatted.Key["port"] != float64(80) || fe[0].Formatted.Value["backend_count"] != float64(1) {
		t.Errorf("frontend dump = %+v, want port 80 with one backend", fe)
	}
}
