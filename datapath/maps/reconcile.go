package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// batchSize is how many entries one batch syscall carries: large enough to
// amortise the syscall, small enough to keep the buffers modest and to stay
// above any hash bucket's length (BatchLookup fails with ENOSPC otherwise).
const batchSize = 1024

// Stats counts what a reconcile (or one of its steps) did.
type Stats struct {
	Unchanged int // desired entries already present with the same value
	Added     int // entries written that were absent
	Updated   int // entries rewritten with a new value
	Deleted   int // entries removed because they are not desired
	Failed    int // writes or deletes the kernel refused (see the error)
	// Batched is true when the kernel took writes or deletes in batches;
	// false when it had to fall back to one syscall per key (or nothing
	// needed writing).
	Batched bool
}

// Changed reports how many entries were written or deleted.
func (s Stats) Changed() int { return s.Added + s.Updated + s.Deleted }

func (s *Stats) add(o Stats) {
	s.Unchanged += o.Unchanged
	s.Added += o.Added
	s.Updated += o.Updated
	s.Deleted += o.Deleted
	s.Failed += o.Failed
	s.Batched = s.Batched || o.Batched
}

// Dump reads every entry of m, in batches where the kernel supports it for
// the map type and one key at a time otherwise. K and V must be the map's
// key and value layouts (the types in layout.go, or fixed-size integers).
// Per-CPU maps are not supported. Entries changed concurrently may be seen
// or not.
func Dump[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	if isPerCPU(m.Type()) {
		return nil, fmt.Errorf("dump %s: per-CPU maps are not supported", m)
	}
	out := make(map[K]V)
	var cursor ebpf.MapBatchCursor
	keys := make([]K, batchSize)
	vals := make([]V, batchSize)
	for first := true; ; first = false {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if first && errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dump %s: %w", m, err)
		}
	}

	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump %s: %w", m, err)
	}
	return out, nil
}

// Diff is the difference between a map's contents and the desired ones:
// the entries to write (new or changed) and the keys to delete. Apply the
// two halves separately (Write, then Delete) to order updates across maps,
// e.g. add backends before the slots that name them and remove them after.
type Diff[K comparable, V comparable] struct {
	WriteKeys   []K
	WriteValues []V
	DeleteKeys  []K
	Unchanged   int
	added       int
}

// ComputeDiff reads m and compares it with desired.
func ComputeDiff[K comparable, V comparable](m *ebpf.Map, desired map[K]V) (*Diff[K, V], error) {
	cur, err := Dump[K, V](m)
	if err != nil {
		return nil, err
	}
	return diffOf(cur, desired), nil
}

func diffOf[K comparable, V comparable](cur, desired map[K]V) *Diff[K, V] {
	d := &Diff[K, V]{}
	for k, v := range desired {
		old, ok := cur[k]
		switch {
		case !ok:
			d.added++
		case old == v:
			d.Unchanged++
			continue
		}
		d.WriteKeys = append(d.WriteKeys, k)
		d.WriteValues = append(d.WriteValues, v)
	}
	for k := range cur {
		if _, ok := desired[k]; !ok {
			d.DeleteKeys = append(d.DeleteKeys, k)
		}
	}
	return d
}

// Empty reports whether there is nothing to write or delete.
func (d *Diff[K, V]) Empty() bool { return len(d.WriteKeys) == 0 && len(d.DeleteKeys) == 0 }

// Write applies the additions and updates.
func (d *Diff[K, V]) Write(m *ebpf.Map) (Stats, error) {
	st := Stats{Unchanged: d.Unchanged}
	ok, batched, err := writeEntries(m, d.WriteKeys, d.WriteValues)
	st.Batched = batched
	st.Failed = len(d.WriteKeys) - ok
	// Which writes failed is not tracked per key; attribute successes to
	// additions first, which is exact whenever nothing failed.
	st.Added = min(ok, d.added)
	st.Updated = ok - st.Added
	return st, err
}

// Delete applies the deletions. Keys already gone are not an error.
func (d *Diff[K, V]) Delete(m *ebpf.Map) (Stats, error) {
	ok, batched, err := deleteKeys(m, d.DeleteKeys)
	return Stats{Deleted: ok, Failed: len(d.DeleteKeys) - ok, Batched: batched}, err
}

// Reconcile makes m hold exactly desired: it reads the map, writes only the
// entries that are missing or differ, and deletes the ones not desired, in
// batches where the kernel supports them for this map type, one key at a
// time otherwise. It keeps going past refused writes (a full map) and
// reports them in Stats.Failed and the error.
func Reconcile[K comparable, V comparable](m *ebpf.Map, desired map[K]V) (Stats, error) {
	d, err := ComputeDiff(m, desired)
	if err != nil {
		return Stats{}, err
	}
	st, werr := d.Write(m)
	dst, derr := d.Delete(m)
	st.add(dst)
	return st, errors.Join(werr, derr)
}

// writeEntries writes keys[i]=vals[i] and returns how many the kernel took.
func writeEntries[K, V any](m *ebpf.Map, keys []K, vals []V) (written int, batched bool, err error) {
	var errs []error
	perKey := func(from, to int) {
		for i := from; i < to; i++ {
			if err := m.Put(keys[i], vals[i]); err != nil {
				errs = appendLimited(errs, explainWrite(m, err))
				continue
			}
			written++
		}
	}
	for start := 0; start < len(keys); start += batchSize {
		end := min(start+batchSize, len(keys))
		n, err := m.BatchUpdate(keys[start:end], vals[start:end], nil)
		written += n
		switch {
		case err == nil:
			batched = true
		case errors.Is(err, ebpf.ErrNotSupported) && n == 0 && !batched:
			perKey(start, len(keys))
			return written, false, joinLimited(m, "write", errs)
		default:
			// The kernel stopped at a refused key (a full map): finish the
			// chunk one key at a time so every acceptable entry lands.
			batched = batched || n > 0
			perKey(start+n, end)
		}
	}
	return written, batched, joinLimited(m, "write", errs)
}

// deleteKeys deletes keys, ignoring ones already absent.
func deleteKeys[K any](m *ebpf.Map, keys []K) (deleted int, batched bool, err error) {
	var errs []error
	perKey := func(ks []K) {
		for _, k := range ks {
			err := m.Delete(k)
			switch {
			case err == nil:
				deleted++
			case errors.Is(err, ebpf.ErrKeyNotExist):
			default:
				errs = appendLimited(errs, err)
			}
		}
	}
	for start := 0; start < len(keys); {
		end := min(start+batchSize, len(keys))
		n, err := m.BatchDelete(keys[start:end], nil)
		deleted += n
		switch {
		case err == nil:
			batched = true
			start = end
		case errors.Is(err, ebpf.ErrKeyNotExist):
			// The kernel stops at the first missing key: skip it.
			batched = true
			start += n + 1
		case errors.Is(err, ebpf.ErrNotSupported) && n == 0:
			perKey(keys[start:])
			return deleted, batched, joinLimited(m, "delete", errs)
		default:
			perKey(keys[start+n+1 : end])
			errs = appendLimited(errs, err)
			start = end
		}
	}
	return deleted, batched, joinLimited(m, "delete", errs)
}

func explainWrite(m *ebpf.Map, err error) error {
	// Hash and trie maps report a full map as E2BIG.
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("map full (max entries %d; raise its size in maps.Config): %w", m.MaxEntries(), err)
	}
	return err
}

const maxErrs = 5

func appendLimited(errs []error, err error) []error {
	if len(errs) < maxErrs {
		return append(errs, err)
	}
	return errs
}

func joinLimited(m *ebpf.Map, op string, errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%s %s (first %d errors): %w", op, m, len(errs), errors.Join(errs...))
}

func isPerCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUArray, ebpf.PerCPUHash, ebpf.LRUCPUHash:
		return true
	}
	return false
}
