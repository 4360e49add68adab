package maps

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
)

// Affinity says which backends of a global service a connection prefers.
type Affinity uint8

const (
	// AffinityNone spreads connections over all backends.
	AffinityNone Affinity = 0
	// AffinityLocal uses local-cluster backends while any exist, else remote.
	AffinityLocal Affinity = 1
	// AffinityRemote uses remote-cluster backends while any exist, else local.
	AffinityRemote Affinity = 2
)

func (a Affinity) String() string {
	switch a {
	case AffinityNone:
		return "none"
	case AffinityLocal:
		return "local"
	case AffinityRemote:
		return "remote"
	}
	return fmt.Sprintf("affinity(%d)", uint8(a))
}

// Frontend is the address a global service is reached at.
type Frontend struct {
	Addr     netip.Addr
	Port     uint16
	Protocol Protocol // ProtoTCP or ProtoUDP
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.Addr, f.Port), f.Protocol)
}

func (f Frontend) key() (FrontendKey, error) {
	a := f.Addr.Unmap()
	switch {
	case !a.IsValid() || a.IsUnspecified():
		return FrontendKey{}, fmt.Errorf("frontend %v: invalid address", f)
	case f.Port == 0:
		return FrontendKey{}, fmt.Errorf("frontend %v: port 0", f)
	case f.Protocol != ProtoTCP && f.Protocol != ProtoUDP:
		return FrontendKey{}, fmt.Errorf("frontend %v: protocol must be TCP or UDP", f)
	}
	return FrontendKey{Addr: AddrFrom(a), Port: f.Port, Proto: uint8(f.Protocol)}, nil
}

// Frontend converts the key back.
func (k FrontendKey) Frontend() Frontend {
	return Frontend{Addr: k.Addr.Addr(), Port: k.Port, Protocol: Protocol(k.Proto)}
}

// Backend is one endpoint of a global service.
type Backend struct {
	Addr      netip.Addr
	Port      uint16
	ClusterID uint16
	// Local is true for a backend in the local cluster (affinity uses it).
	Local bool
}

// Service is a global service as the socket LB serves it.
type Service struct {
	Frontend Frontend
	Affinity Affinity
	Backends []Backend
}

// MaxBackendsPerService is the most backends one service can have (the
// counts in FrontendValue are 16 bits).
const MaxBackendsPerService = 1<<16 - 1

// backendIdent identifies a backend entry; services with the same backend
// share it.
type backendIdent struct {
	addr    Addr16
	port    uint16
	cluster uint16
}

func identOf(v BackendValue) backendIdent {
	return backendIdent{addr: v.Addr, port: v.Port, cluster: v.ClusterID}
}

// layout validates svc and returns its frontend key and its backends in
// slot order: local ones first, each group sorted so that the layout is
// stable, duplicates dropped.
func layout(svc Service) (FrontendKey, []BackendValue, uint16, error) {
	fk, err := svc.Frontend.key()
	if err != nil {
		return FrontendKey{}, nil, 0, err
	}
	if svc.Affinity > AffinityRemote {
		return FrontendKey{}, nil, 0, fmt.Errorf("service %v: unknown affinity %d", svc.Frontend, svc.Affinity)
	}
	is4 := svc.Frontend.Addr.Unmap().Is4()
	bes := make([]BackendValue, 0, len(svc.Backends))
	seen := make(map[backendIdent]bool, len(svc.Backends))
	for _, b := range svc.Backends {
		a := b.Addr.Unmap()
		switch {
		case !a.IsValid() || a.IsUnspecified():
			return FrontendKey{}, nil, 0, fmt.Errorf("service %v: backend %v: invalid address", svc.Frontend, b.Addr)
		case a.Is4() != is4:
			return FrontendKey{}, nil, 0, fmt.Errorf("service %v: backend %v: address family differs from the frontend's", svc.Frontend, a)
		case b.Port == 0:
			return FrontendKey{}, nil, 0, fmt.Errorf("service %v: backend %v: port 0", svc.Frontend, a)
		}
		v := BackendValue{Addr: AddrFrom(a), Port: b.Port, ClusterID: b.ClusterID}
		if b.Local {
			v.Flags |= BackendFlagLocal
		}
		if id := identOf(v); !seen[id] {
			seen[id] = true
			bes = append(bes, v)
		}
	}
	if len(bes) > MaxBackendsPerService {
		return FrontendKey{}, nil, 0, fmt.Errorf("service %v: %d backends, at most %d supported", svc.Frontend, len(bes), MaxBackendsPerService)
	}
	slices.SortFunc(bes, func(x, y BackendValue) int {
		if c := cmp.Compare(y.Flags&BackendFlagLocal, x.Flags&BackendFlagLocal); c != 0 {
			return c // local first
		}
		if c := slices.Compare(x.Addr[:], y.Addr[:]); c != 0 {
			return c
		}
		if c := cmp.Compare(x.Port, y.Port); c != 0 {
			return c
		}
		return cmp.Compare(x.ClusterID, y.ClusterID)
	})
	local := 0
	for _, b := range bes {
		if b.Flags&BackendFlagLocal != 0 {
			local++
		}
	}
	return fk, bes, uint16(local), nil
}

// ServiceStats counts what a services reconcile did, per map.
type ServiceStats struct {
	Frontends, Slots, Backends Stats
	// Skipped counts desired services that were invalid (see the error).
	Skipped int
}

// Services programs the three service maps: isthmus_lb_fe (frontend ->
// service ID and counts), isthmus_lb_slot ((service ID, slot) -> backend ID)
// and isthmus_lb_be (backend ID -> address). It assigns the IDs, reusing
// those already in the maps after a restart, and orders its writes so that
// a program reading concurrently never follows a slot to a missing backend:
// backends are added before the slots naming them, slots before the
// frontend counts that expose them, and removals go the other way round.
//
// Safe for concurrent use. Methods hold a mutex during their syscalls.
type Services struct {
	fe, slot, be *ebpf.Map

	mu sync.Mutex // guards everything below
	// loaded says the mirror below matches the maps; a failed write clears
	// it and the next call reloads from the maps.
	loaded    bool
	services  map[FrontendKey]*serviceEntry
	backends  map[backendIdent]*backendEntry
	backendID map[uint32]*backendEntry
	svcIDs    idAllocator
	beIDs     idAllocator
}

type serviceEntry struct {
	value    FrontendValue
	backends []uint32 // backend ID per slot
}

type backendEntry struct {
	id    uint32
	value BackendValue
	refs  int // slots naming it
}

func newServices(fe, slot, be *ebpf.Map) *Services {
	return &Services{fe: fe, slot: slot, be: be}
}

// current is the raw content of the three maps.
type current struct {
	fe   map[FrontendKey]FrontendValue
	slot map[SlotKey]SlotValue
	be   map[uint32]BackendValue
}

func (s *Services) read() (current, error) {
	var c current
	var err error
	if c.fe, err = Dump[FrontendKey, FrontendValue](s.fe); err != nil {
		return c, err
	}
	if c.slot, err = Dump[SlotKey, SlotValue](s.slot); err != nil {
		return c, err
	}
	if c.be, err = Dump[uint32, BackendValue](s.be); err != nil {
		return c, err
	}
	return c, nil
}

// mirror rebuilds the in-memory view from map contents. Entries that do not
// fit together (a slot naming a missing backend) are kept as found; the
// next Reconcile rewrites them.
func (s *Services) mirror(c current) {
	s.services = make(map[FrontendKey]*serviceEntry, len(c.fe))
	s.backends = make(map[backendIdent]*backendEntry, len(c.be))
	s.backendID = make(map[uint32]*backendEntry, len(c.be))
	s.svcIDs = newIDAllocator()
	s.beIDs = newIDAllocator()
	for id, v := range c.be {
		s.beIDs.use(id)
		e := &backendEntry{id: id, value: v}
		s.backendID[id] = e
		if prev, ok := s.backends[identOf(v)]; !ok || prev.id > id {
			s.backends[identOf(v)] = e
		}
	}
	for k, v := range c.fe {
		s.svcIDs.use(v.ServiceID)
		e := &serviceEntry{value: v}
		for i := uint32(0); i < uint32(v.BackendCount); i++ {
			sv, ok := c.slot[SlotKey{ServiceID: v.ServiceID, Slot: i}]
			if !ok {
				break
			}
			e.backends = append(e.backends, sv.BackendID)
			if be := s.backendID[sv.BackendID]; be != nil {
				be.refs++
			}
		}
		s.services[k] = e
	}
	for k := range c.slot {
		s.svcIDs.use(k.ServiceID)
	}
	s.loaded = true
}

func (s *Services) ensureLoaded() error {
	if s.loaded {
		return nil
	}
	c, err := s.read()
	if err != nil {
		return fmt.Errorf("read service maps: %w", err)
	}
	s.mirror(c)
	return nil
}

// Upsert adds or changes one service.
func (s *Services) Upsert(svc Service) error {
	fk, bes, local, err := layout(svc)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ensureLoaded(); err != nil {
		return err
	}
	if err := s.upsert(fk, svc.Affinity, bes, local); err != nil {
		s.loaded = false
		return fmt.Errorf("upsert service %v: %w", svc.Frontend, err)
	}
	return nil
}

func (s *Services) upsert(fk FrontendKey, aff Affinity, bes []BackendValue, local uint16) error {
	cur := s.services[fk]
	var id uint32
	if cur != nil {
		id = cur.value.ServiceID
	} else {
		id = s.svcIDs.alloc()
	}

	// 1. Backends first, so that every slot written next names one.
	ids := make([]uint32, len(bes))
	for i, v := range bes {
		e := s.backends[identOf(v)]
		if e == nil {
			e = &backendEntry{id: s.beIDs.alloc(), value: v}
			if err := s.be.Put(e.id, v); err != nil {
				s.beIDs.release(e.id)
				return fmt.Errorf("write backend: %w", explainWrite(s.be, err))
			}
			s.backends[identOf(v)] = e
			s.backendID[e.id] = e
		} else if e.value != v {
			if err := s.be.Put(e.id, v); err != nil {
				return fmt.Errorf("write backend: %w", explainWrite(s.be, err))
			}
			e.value = v
		}
		e.refs++
		ids[i] = e.id
	}

	// 2. Slots that changed.
	var old []uint32
	if cur != nil {
		old = cur.backends
	}
	for i, bid := range ids {
		if i < len(old) && old[i] == bid {
			continue
		}
		if err := s.slot.Put(SlotKey{ServiceID: id, Slot: uint32(i)}, SlotValue{BackendID: bid}); err != nil {
			return fmt.Errorf("write slot: %w", explainWrite(s.slot, err))
		}
	}

	// 3. The frontend, which makes the new counts visible.
	fv := FrontendValue{ServiceID: id, BackendCount: uint16(len(ids)), LocalBackendCount: local, Affinity: uint8(aff)}
	if cur == nil || cur.value != fv {
		if err := s.fe.Put(fk, fv); err != nil {
			if cur == nil {
				s.svcIDs.release(id)
			}
			return fmt.Errorf("write frontend: %w", explainWrite(s.fe, err))
		}
	}
	s.services[fk] = &serviceEntry{value: fv, backends: ids}

	// 4. Slots past the new count, then backends nothing names any more.
	for i := len(ids); i < len(old); i++ {
		if err := deleteIgnoringAbsent(s.slot, SlotKey{ServiceID: id, Slot: uint32(i)}); err != nil {
			return fmt.Errorf("delete slot: %w", err)
		}
	}
	return s.unref(old)
}

// unref drops one reference per ID and deletes backends left unreferenced.
func (s *Services) unref(ids []uint32) error {
	for _, bid := range ids {
		e := s.backendID[bid]
		if e == nil {
			continue
		}
		if e.refs--; e.refs > 0 {
			continue
		}
		if err := deleteIgnoringAbsent(s.be, bid); err != nil {
			return fmt.Errorf("delete backend: %w", err)
		}
		delete(s.backendID, bid)
		if s.backends[identOf(e.value)] == e {
			delete(s.backends, identOf(e.value))
		}
		s.beIDs.release(bid)
	}
	return nil
}

// Delete removes one service; an absent one is not an error.
func (s *Services) Delete(f Frontend) error {
	fk, err := f.key()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ensureLoaded(); err != nil {
		return err
	}
	cur := s.services[fk]
	if cur == nil {
		return nil
	}
	err = func() error {
		if err := deleteIgnoringAbsent(s.fe, fk); err != nil {
			return fmt.Errorf("delete frontend: %w", err)
		}
		delete(s.services, fk)
		for i := range cur.backends {
			if err := deleteIgnoringAbsent(s.slot, SlotKey{ServiceID: cur.value.ServiceID, Slot: uint32(i)}); err != nil {
				return fmt.Errorf("delete slot: %w", err)
			}
		}
		s.svcIDs.release(cur.value.ServiceID)
		return s.unref(cur.backends)
	}()
	if err != nil {
		s.loaded = false
		return fmt.Errorf("delete service %v: %w", f, err)
	}
	return nil
}

// Reconcile makes the maps serve exactly desired: it reads the maps, keeps
// the IDs of services and backends already there, writes only what differs
// and removes the rest, in the order described on Services. Invalid
// services (and repeated frontends after the first) are skipped, counted in
// Skipped and reported in an InvalidEntriesError; the others still land.
func (s *Services) Reconcile(desired []Service) (ServiceStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st ServiceStats
	c, err := s.read()
	if err != nil {
		s.loaded = false
		return st, fmt.Errorf("read service maps: %w", err)
	}
	s.mirror(c)

	// IDs for new services and backends avoid every ID in the maps now,
	// including ones about to be deleted, so no program ever follows a
	// stale frontend into a reused ID's slots.
	want := current{
		fe:   make(map[FrontendKey]FrontendValue, len(desired)),
		slot: make(map[SlotKey]SlotValue),
		be:   make(map[uint32]BackendValue),
	}
	beID := make(map[backendIdent]uint32)
	var bad []error
	for _, svc := range desired {
		fk, bes, local, err := layout(svc)
		if err == nil {
			if _, dup := want.fe[fk]; dup {
				err = fmt.Errorf("service %v: frontend listed twice; the first one is used", svc.Frontend)
			}
		}
		if err != nil {
			bad = append(bad, err)
			continue
		}
		var id uint32
		if cur := s.services[fk]; cur != nil {
			id = cur.value.ServiceID
		} else {
			id = s.svcIDs.alloc()
		}
		for i, v := range bes {
			ident := identOf(v)
			bid, ok := beID[ident]
			if !ok {
				if e := s.backends[ident]; e != nil {
					bid = e.id
				} else {
					bid = s.beIDs.alloc()
				}
				beID[ident] = bid
				want.be[bid] = v
			}
			want.slot[SlotKey{ServiceID: id, Slot: uint32(i)}] = SlotValue{BackendID: bid}
		}
		want.fe[fk] = FrontendValue{ServiceID: id, BackendCount: uint16(len(bes)), LocalBackendCount: local, Affinity: uint8(svc.Affinity)}
	}
	st.Skipped = len(bad)

	dfe := diffOf(c.fe, want.fe)
	dslot := diffOf(c.slot, want.slot)
	dbe := diffOf(c.be, want.be)
	var errs []error
	step := func(into *Stats, f func() (Stats, error)) {
		x, err := f()
		into.add(x)
		if err != nil {
			errs = append(errs, err)
		}
	}
	step(&st.Backends, func() (Stats, error) { return dbe.Write(s.be) })
	step(&st.Slots, func() (Stats, error) { return dslot.Write(s.slot) })
	step(&st.Frontends, func() (Stats, error) { return dfe.Write(s.fe) })
	step(&st.Frontends, func() (Stats, error) { return dfe.Delete(s.fe) })
	step(&st.Slots, func() (Stats, error) { return dslot.Delete(s.slot) })
	step(&st.Backends, func() (Stats, error) { return dbe.Delete(s.be) })

	if len(errs) > 0 {
		s.loaded = false
	} else {
		s.mirror(want)
	}
	if len(bad) > 0 {
		errs = append(errs, &InvalidEntriesError{Map: NameFrontends, Errs: bad})
	}
	return st, errors.Join(errs...)
}

// Dump returns the services as the maps hold them now, backends in slot
// order. A slot naming a missing backend is left out.
func (s *Services) Dump() ([]Service, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.read()
	if err != nil {
		return nil, fmt.Errorf("read service maps: %w", err)
	}
	out := make([]Service, 0, len(c.fe))
	for k, v := range c.fe {
		svc := Service{Frontend: k.Frontend(), Affinity: Affinity(v.Affinity)}
		for i := uint32(0); i < uint32(v.BackendCount); i++ {
			sv, ok := c.slot[SlotKey{ServiceID: v.ServiceID, Slot: i}]
			if !ok {
				continue
			}
			bv, ok := c.be[sv.BackendID]
			if !ok {
				continue
			}
			svc.Backends = append(svc.Backends, Backend{
				Addr: bv.Addr.Addr(), Port: bv.Port, ClusterID: bv.ClusterID,
				Local: bv.Flags&BackendFlagLocal != 0,
			})
		}
		out = append(out, svc)
	}
	slices.SortFunc(out, func(a, b Service) int {
		if c := a.Frontend.Addr.Compare(b.Frontend.Addr); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Frontend.Port, b.Frontend.Port); c != 0 {
			return c
		}
		return cmp.Compare(a.Frontend.Protocol, b.Frontend.Protocol)
	})
	return out, nil
}

func deleteIgnoringAbsent(m *ebpf.Map, key any) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// idAllocator hands out non-zero uint32 IDs not in use, cycling forward so
// that a freed ID is not reused at once.
type idAllocator struct {
	used map[uint32]struct{}
	next uint32
}

func newIDAllocator() idAllocator {
	return idAllocator{used: make(map[uint32]struct{}), next: 1}
}

func (a *idAllocator) use(id uint32) { a.used[id] = struct{}{} }

func (a *idAllocator) release(id uint32) { delete(a.used, id) }

func (a *idAllocator) alloc() uint32 {
	for {
		id := a.next
		a.next++
		if a.next == 0 {
			a.next = 1
		}
		if _, taken := a.used[id]; !taken && id != 0 {
			a.used[id] = struct{}{}
			return id
		}
	}
}
