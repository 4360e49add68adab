package maps

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs"
)

// DefaultRoot is the bpffs directory the agent pins its maps under. The lab
// gives each node its own directory instead.
const DefaultRoot = "/sys/fs/bpf/isthmus"

// Default map sizes (max entries), used where Config leaves a size zero.
const (
	DefaultIPCacheMaxEntries     = 512 * 1024
	DefaultFrontendMaxEntries    = 64 * 1024
	DefaultSlotMaxEntries        = 256 * 1024
	DefaultBackendMaxEntries     = 128 * 1024
	DefaultRevNATMaxEntries      = 128 * 1024
	DefaultPolicyMaxEntries      = 128 * 1024
	DefaultEnforcementMaxEntries = 64 * 1024
	DefaultCTMaxEntries          = 256 * 1024
	DefaultFlowRingBytes         = 1 << 20
)

// ErrIncompatiblePin is returned by Open, with Config.RefuseIncompatible,
// when a pinned map differs from what this build defines.
var ErrIncompatiblePin = errors.New("pinned map is incompatible with this build")

// Config says where the maps are pinned and how large they are. Changing a
// size for existing pins recreates those maps (see Open).
type Config struct {
	// Root is the bpffs directory holding the pins. Empty means DefaultRoot.
	// It must lie on a mounted bpffs (bpffs.Mount); it is created if missing.
	Root string

	// Max entries per map; zero means the Default* constant of the same name.
	// IPCacheMaxEntries sizes both halves of the ipcache (host entries and
	// shorter prefixes); neither preallocates.
	IPCacheMaxEntries     uint32
	FrontendMaxEntries    uint32
	SlotMaxEntries        uint32
	BackendMaxEntries     uint32
	RevNATMaxEntries      uint32
	PolicyMaxEntries      uint32
	EnforcementMaxEntries uint32
	CTMaxEntries          uint32

	// FlowRingBytes is the size of the flow event ring buffer: a power of
	// two and a multiple of the page size. Zero means DefaultFlowRingBytes.
	FlowRingBytes uint32

	// RefuseIncompatible makes Open fail with ErrIncompatiblePin instead of
	// recreating a pinned map whose type, sizes, flags or key/value layout
	// differ from this build's. False (the default) recreates it.
	RefuseIncompatible bool
}

func (c Config) withDefaults() Config {
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Root == "" {
		c.Root = DefaultRoot
	}
	def(&c.IPCacheMaxEntries, DefaultIPCacheMaxEntries)
	def(&c.FrontendMaxEntries, DefaultFrontendMaxEntries)
	def(&c.SlotMaxEntries, DefaultSlotMaxEntries)
	def(&c.BackendMaxEntries, DefaultBackendMaxEntries)
	def(&c.RevNATMaxEntries, DefaultRevNATMaxEntries)
	def(&c.PolicyMaxEntries, DefaultPolicyMaxEntries)
	def(&c.EnforcementMaxEntries, DefaultEnforcementMaxEntries)
	def(&c.CTMaxEntries, DefaultCTMaxEntries)
	def(&c.FlowRingBytes, DefaultFlowRingBytes)
	return c
}

func (c Config) maxEntries() map[string]uint32 {
	return map[string]uint32{
		NameIPCache:     c.IPCacheMaxEntries,
		NameIPHosts:     c.IPCacheMaxEntries,
		NameFrontends:   c.FrontendMaxEntries,
		NameSlots:       c.SlotMaxEntries,
		NameBackends:    c.BackendMaxEntries,
		NameRevNAT:      c.RevNATMaxEntries,
		NamePolicy:      c.PolicyMaxEntries,
		NameEnforcement: c.EnforcementMaxEntries,
		NameCT:          c.CTMaxEntries,
		NameFlows:       c.FlowRingBytes,
	}
}

func (c Config) validate() error {
	page := uint32(os.Getpagesize())
	if r := c.FlowRingBytes; r&(r-1) != 0 || r%page != 0 {
		return fmt.Errorf("FlowRingBytes %d: must be a power of two and a multiple of the page size (%d)", r, page)
	}
	return nil
}

// Recreation records a pinned map that Open replaced because it differed
// from this build (an upgrade, or a size changed in Config).
type Recreation struct {
	Name   string // map name, e.g. isthmus_ipcache
	Path   string // pin path
	Reason string // what differed
	// Migrated entries were copied into the new map (only when the key and
	// value layouts were unchanged); Lost entries did not fit or could not
	// be copied. Per-CPU maps and the ring buffer are not migrated.
	Migrated, Lost int
}

// Maps holds every pinned Isthmus map, opened or created by Open.
//
// The typed wrappers are safe for concurrent use. Close releases this
// process's handles and leaves the pins, so that attached programs keep
// working while the agent restarts; Unpin removes the pins.
type Maps struct {
	IPCache     *IPCache
	Services    *Services
	Policy      *Policy
	Enforcement *Enforcement
	Config      *ConfigMap

	// Maps written only by the programs, for loaders and readers.
	CT      *ebpf.Map // connection tracking (LRU)
	RevNAT  *ebpf.Map // socket LB reverse translation (LRU)
	Flows   *ebpf.Map // flow event ring buffer
	Metrics *ebpf.Map // per-CPU counters by reason

	root      string
	byName    map[string]*ebpf.Map
	recreated []Recreation
}

// Open opens the maps pinned under cfg.Root, creating and pinning the ones
// that do not exist. A pinned map is reused across restarts when its type,
// key and value sizes, max entries, flags and the BTF layout of its key and
// value all match this build. Otherwise, Open recreates it: it creates a new
// map, copies the old entries over when only the size or flags changed, and
// atomically renames the new pin over the old one, so programs attached with
// the old map keep working until they are reloaded (the loaders in
// datapath/socklb and datapath/tunnelpolicy do that on start). Recreated
// reports what happened, for the caller to log; with cfg.RefuseIncompatible
// Open fails instead.
func Open(cfg Config) (_ *Maps, err error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := bpffs.EnsureDir(cfg.Root); err != nil {
		return nil, err
	}
	// A no-op on kernels that account BPF memory to the cgroup (5.11+).
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise memlock limit: %w", err)
	}
	spec, err := loadMapdefs()
	if err != nil {
		return nil, err
	}

	m := &Maps{root: cfg.Root, byName: make(map[string]*ebpf.Map)}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()

	sizes := cfg.maxEntries()
	names := make([]string, 0, len(spec.Maps))
	for name := range spec.Maps {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		ms := spec.Maps[name].Copy()
		if n, ok := sizes[name]; ok {
			ms.MaxEntries = n
		}
		em, rec, err := openPinned(ms, filepath.Join(cfg.Root, name), cfg.RefuseIncompatible)
		if err != nil {
			return nil, err
		}
		m.byName[name] = em
		if rec != nil {
			m.recreated = append(m.recreated, *rec)
		}
	}

	m.IPCache = &IPCache{trie: m.byName[NameIPCache], hosts: m.byName[NameIPHosts]}
	m.Services = newServices(m.byName[NameFrontends], m.byName[NameSlots], m.byName[NameBackends])
	m.Policy = &Policy{m: m.byName[NamePolicy]}
	m.Enforcement = &Enforcement{m: m.byName[NameEnforcement]}
	m.Config = &ConfigMap{m: m.byName[NameConfig]}
	m.CT = m.byName[NameCT]
	m.RevNAT = m.byName[NameRevNAT]
	m.Flows = m.byName[NameFlows]
	m.Metrics = m.byName[NameMetrics]
	for _, name := range names {
		if m.byName[name] == nil {
			return nil, fmt.Errorf("map %s missing from the compiled definitions", name)
		}
	}
	return m, nil
}

// Root returns the bpffs directory holding the pins.
func (m *Maps) Root() string { return m.root }

// Recreated lists the pinned maps Open replaced, with the reason.
func (m *Maps) Recreated() []Recreation { return slices.Clone(m.recreated) }

// Map returns the map with the given C name (Name* constants), or nil.
func (m *Maps) Map(name string) *ebpf.Map { return m.byName[name] }

// Replacements returns the maps by C name, for
// ebpf.CollectionOptions.MapReplacements when loading a program object that
// includes maps.h. The loader clones them; the caller keeps ownership.
func (m *Maps) Replacements() map[string]*ebpf.Map {
	out := make(map[string]*ebpf.Map, len(m.byName))
	for k, v := range m.byName {
		out[k] = v
	}
	return out
}

// CollectionOptions prepares spec, a program object compiled with maps.h,
// to run on these pinned maps instead of creating its own: it aligns each
// map spec's size with the pinned map (sizes come from Config, not from the
// C defaults) and returns options whose MapReplacements name the pinned
// maps. A map in spec that Maps does not know is an error: the object was
// built from a different maps.h.
func (m *Maps) CollectionOptions(spec *ebpf.CollectionSpec) (*ebpf.CollectionOptions, error) {
	repl := make(map[string]*ebpf.Map, len(spec.Maps))
	for name, ms := range spec.Maps {
		pinned, ok := m.byName[name]
		if !ok {
			if strings.HasPrefix(name, ".") {
				continue // .rodata, .data, .bss: the object's own globals
			}
			return nil, fmt.Errorf("map %s in the program object is not an Isthmus map; rebuild the object (make generate)", name)
		}
		ms.MaxEntries = pinned.MaxEntries()
		repl[name] = pinned
	}
	return &ebpf.CollectionOptions{MapReplacements: repl}, nil
}

// Close releases the handles. The pins stay, and so do the maps while
// pinned or used by a program.
func (m *Maps) Close() error {
	var errs []error
	for _, em := range m.byName {
		if err := em.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	m.byName = map[string]*ebpf.Map{}
	return errors.Join(errs...)
}

// Unpin removes the map pins (not the handles: Close still applies) and the
// root directory if nothing else is pinned in it. The kernel frees each map
// once no program or handle uses it.
func (m *Maps) Unpin() error {
	var errs []error
	for name := range m.byName {
		if err := os.Remove(filepath.Join(m.root, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(m.root); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// openPinned returns the map pinned at path if it matches spec, creates and
// pins one if none is there, and recreates it otherwise (see Open).
func openPinned(spec *ebpf.MapSpec, path string, refuse bool) (*ebpf.Map, *Recreation, error) {
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			return nil, nil, fmt.Errorf("create map %s: %w", spec.Name, err)
		}
		if err := m.Pin(path); err != nil {
			m.Close()
			return nil, nil, fmt.Errorf("pin map %s: %w", spec.Name, err)
		}
		return m, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load pinned map %s: %w", path, err)
	}

	sizeErr := spec.Compatible(old)
	layoutErr := checkLayout(spec, old)
	if sizeErr == nil && layoutErr == nil {
		return old, nil, nil
	}
	defer old.Close()
	reason := errors.Join(sizeErr, layoutErr).Error()
	if refuse {
		return nil, nil, fmt.Errorf("map %s pinned at %s: %s: %w; remove the pin to let it be recreated (its contents are lost)",
			spec.Name, path, reason, ErrIncompatiblePin)
	}

	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("recreate map %s: %w", spec.Name, err)
	}
	rec := &Recreation{Name: spec.Name, Path: path, Reason: reason}
	if layoutErr == nil && migratable(spec, old) {
		rec.Migrated, rec.Lost = migrate(old, m)
	}
	// Pin beside the old one and rename over it: the path never dangles.
	// bpffs reserves dots in names.
	tmp := path + "_new"
	_ = os.Remove(tmp)
	if err := m.Pin(tmp); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("pin recreated map %s: %w", spec.Name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		m.Close()
		return nil, nil, fmt.Errorf("replace pin of map %s: %w", spec.Name, err)
	}
	return m, rec, nil
}

func migratable(spec *ebpf.MapSpec, old *ebpf.Map) bool {
	switch spec.Type {
	case ebpf.RingBuf, ebpf.PerCPUArray, ebpf.PerCPUHash, ebpf.LRUCPUHash:
		return false
	}
	return old.Type() == spec.Type && old.KeySize() == spec.KeySize && old.ValueSize() == spec.ValueSize
}

// migrate copies entries from old to m as raw bytes, until m is full.
func migrate(old, m *ebpf.Map) (migrated, lost int) {
	var k, v []byte
	it := old.Iterate()
	for it.Next(&k, &v) {
		if err := m.Put(k, v); err != nil {
			lost++
			continue
		}
		migrated++
	}
	if it.Err() != nil {
		lost++
	}
	return migrated, lost
}
