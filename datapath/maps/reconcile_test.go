package maps

import (
	"maps"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
)

func newHash(t *testing.T, max uint32) *ebpf.Map {
	t.Helper()
	bpffstest.PinRoot(t) // root and bpffs checks; the map itself is unpinned
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestReconcileWritesOnlyDifferences(t *testing.T) {
	m := newHash(t, 4096)
	desired := map[uint32]uint64{}
	for i := range uint32(3000) {
		desired[i] = uint64(i) * 10
	}
	st, err := Reconcile(m, desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.Added != 3000 || st.Updated != 0 || st.Deleted != 0 || st.Unchanged != 0 || !st.Batched {
		t.Fatalf("first reconcile: %+v, want 3000 added in batches", st)
	}

	// Change 5, delete 7, add 2, leave the rest.
	next := maps.Clone(desired)
	for i := range uint32(5) {
		next[i] = 1
	}
	for i := uint32(100); i < 107; i++ {
		delete(next, i)
	}
	next[5000], next[5001] = 1, 2
	st, err = Reconcile(m, next)
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Unchanged: 3000 - 5 - 7, Added: 2, Updated: 5, Deleted: 7, Batched: true}
	if st != want {
		t.Fatalf("second reconcile: %+v, want %+v", st, want)
	}
	got, err := Dump[uint32, uint64](m)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, next) {
		t.Fatalf("map holds %d entries, not the %d desired", len(got), len(next))
	}

	// Nothing to do the third time.
	st, err = Reconcile(m, next)
	if err != nil || st.Changed() != 0 || st.Unchanged != len(next) {
		t.Fatalf("idempotent reconcile: %+v, %v", st, err)
	}
}

func TestReconcileKeepsGoingWhenMapIsFull(t *testing.T) {
	m := newHash(t, 8)
	desired := map[uint32]uint64{}
	for i := range uint32(10) {
		desired[i] = 7
	}
	st, err := Reconcile(m, desired)
	if err == nil || !strings.Contains(err.Error(), "map full") {
		t.Fatalf("error %v does not say the map is full", err)
	}
	if st.Added != 8 || st.Failed != 2 {
		t.Fatalf("stats %+v, want 8 added and 2 failed", st)
	}
}

func TestReconcileLPMTrie(t *testing.T) {
	m := openMaps(t, smallConfig(bpffstest.PinRoot(t)))
	desired := map[IPCacheKey]IPCacheValue{}
	for i := range 300 {
		k, err := IPCacheKeyOf(mustPrefix(t, "10.0.0.0/8"))
		if err != nil {
			t.Fatal(err)
		}
		k.Addr[1], k.Addr[2] = byte(i>>8), byte(i)
		k.PrefixLen = IPCachePrefixBase + 24
		desired[k] = IPCacheValue{Identity: uint32(1000 + i)}
	}
	st, err := Reconcile(m.IPCache.Map(), desired)
	if err != nil || st.Added != 300 {
		t.Fatalf("reconcile trie: %+v, %v", st, err)
	}
	for k := range desired {
		delete(desired, k)
		if len(desired) == 200 {
			break
		}
	}
	st, err = Reconcile(m.IPCache.Map(), desired)
	if err != nil || st.Deleted != 100 || st.Unchanged != 200 {
		t.Fatalf("second reconcile trie: %+v, %v", st, err)
	}
	t.Logf("LPM trie batch ops: %v", st.Batched)
	got, err := Dump[IPCacheKey, IPCacheValue](m.IPCache.Map())
	if err != nil || !maps.Equal(got, desired) {
		t.Fatalf("trie holds %d entries, want %d (%v)", len(got), len(desired), err)
	}
}
