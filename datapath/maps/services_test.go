package maps

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
)

func be(addr string, port uint16, cluster uint16, local bool) Backend {
	return Backend{Addr: netip.MustParseAddr(addr), Port: port, ClusterID: cluster, Local: local}
}

func fe(addr string, port uint16) Frontend {
	return Frontend{Addr: netip.MustParseAddr(addr), Port: port, Protocol: ProtoTCP}
}

// slots returns the backends of f in slot order, read from the raw maps the
// way the socket LB program reads them.
func slots(t *testing.T, m *Maps, f Frontend) (FrontendValue, []BackendValue) {
	t.Helper()
	k, err := f.key()
	if err != nil {
		t.Fatal(err)
	}
	var fv FrontendValue
	if err := m.Services.fe.Lookup(k, &fv); err != nil {
		t.Fatalf("frontend %v: %v", f, err)
	}
	var out []BackendValue
	for i := uint32(0); i < uint32(fv.BackendCount); i++ {
		var sv SlotValue
		if err := m.Services.slot.Lookup(SlotKey{ServiceID: fv.ServiceID, Slot: i}, &sv); err != nil {
			t.Fatalf("slot %d of %v: %v", i, f, err)
		}
		var bv BackendValue
		if err := m.Services.be.Lookup(sv.BackendID, &bv); err != nil {
			t.Fatalf("backend %d of slot %d: %v", sv.BackendID, i, err)
		}
		out = append(out, bv)
	}
	return fv, out
}

func TestServicesLocalBackendsFirst(t *testing.T) {
	m := openMaps(t, smallConfig(bpffstest.PinRoot(t)))
	svc := Service{
		Frontend: fe("10.96.0.10", 80),
		Affinity: AffinityLocal,
		Backends: []Backend{
			be("10.2.0.1", 8080, 2, false),
			be("10.1.0.2", 8080, 1, true),
			be("10.2.0.2", 8080, 2, false),
			be("10.1.0.1", 8080, 1, true),
			be("10.1.0.1", 8080, 1, true), // duplicate
		},
	}
	if err := m.Services.Upsert(svc); err != nil {
		t.Fatal(err)
	}
	fv, bes := slots(t, m, svc.Frontend)
	if fv.BackendCount != 4 || fv.LocalBackendCount != 2 || fv.Affinity != uint8(AffinityLocal) {
		t.Fatalf("frontend %+v, want 4 backends, 2 local, affinity local", fv)
	}
	var order []string
	for _, b := range bes {
		order = append(order, b.Addr.String())
	}
	if want := []string{"10.1.0.1", "10.1.0.2", "10.2.0.1", "10.2.0.2"}; !slices.Equal(order, want) {
		t.Fatalf("slot order %v, want %v", order, want)
	}
}

func TestServicesSharedBackendsAndRemoval(t *testing.T) {
	m := openMaps(t, smallConfig(bpffstest.PinRoot(t)))
	shared := be("10.1.0.1", 8080, 1, true)
	a := Service{Frontend: fe("10.96.0.1", 80), Backends: []Backend{shared, be("10.1.0.2", 8080, 1, true)}}
	b := Service{Frontend: fe("10.96.0.2", 80), Backends: []Backend{shared}}
	for _, s := range []Service{a, b} {
		if err := m.Services.Upsert(s); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		all, err := Dump[uint32, BackendValue](m.Services.be)
		if err != nil {
			t.Fatal(err)
		}
		return len(all)
	}
	if n := count(); n != 2 {
		t.Fatalf("%d backend entries, want 2 (one shared)", n)
	}

	// Shrinking a to its shared backend drops the other; the shared one stays
	// while b names it.
	a.Backends = []Backend{shared}
	if err := m.Services.Upsert(a); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d backend entries after shrinking, want 1", n)
	}
	fv, _ := slots(t, m, a.Frontend)
	var sv SlotValue
	if err := m.Services.slot.Lookup(SlotKey{ServiceID: fv.ServiceID, Slot: 1}, &sv); err == nil {
		t.Fatal("slot 1 left behind after shrinking to one backend")
	}

	if err := m.Services.Delete(a.Frontend); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("shared backend removed while b still uses it (%d left)", n)
	}
	if err := m.Services.Delete(b.Frontend); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Fatalf("%d backends left after deleting every service", n)
	}
	all, err := m.Services.Dump()
	if err != nil || len(all) != 0 {
		t.Fatalf("services left: %v %v", all, err)
	}
	if err := m.Services.Delete(b.Frontend); err != nil {
		t.Fatalf("deleting an absent service: %v", err)
	}
}

func TestServicesReconcileKeepsIDsAcrossRestart(t *testing.T) {
	root := bpffstest.PinRoot(t)
	m1 := openMaps(t, smallConfig(root))
	desired := []Service{
		{Frontend: fe("10.96.0.1", 80), Affinity: AffinityRemote, Backends: []Backend{be("10.1.0.1", 80, 1, true), be("10.2.0.1", 80, 2, false)}},
		{Frontend: fe("10.96.0.2", 53), Backends: []Backend{be("10.1.0.9", 53, 1, true)}},
		{Frontend: Frontend{Addr: netip.MustParseAddr("fd00:96::1"), Port: 443, Protocol: ProtoUDP}, Backends: []Backend{be("fd00:1::1", 8443, 1, true)}},
	}
	st, err := m1.Services.Reconcile(desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.Frontends.Added != 3 || st.Slots.Added != 4 || st.Backends.Added != 4 {
		t.Fatalf("first reconcile %+v", st)
	}
	before, _ := slots(t, m1, desired[0].Frontend)

	// A new agent process: fresh handles on the same pins.
	m2 := openMaps(t, smallConfig(root))
	st, err = m2.Services.Reconcile(desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.Frontends.Changed()+st.Slots.Changed()+st.Backends.Changed() != 0 {
		t.Fatalf("reconciling the same state after restart changed entries: %+v", st)
	}
	after, _ := slots(t, m2, desired[0].Frontend)
	if before.ServiceID != after.ServiceID {
		t.Fatalf("service ID changed across restart: %d -> %d", before.ServiceID, after.ServiceID)
	}

	// Incremental and full updates mix: Upsert after Reconcile, then drop a
	// service and an invalid one is skipped, not fatal.
	if err := m2.Services.Upsert(Service{Frontend: fe("10.96.0.3", 80), Backends: []Backend{be("10.2.0.5", 80, 2, false)}}); err != nil {
		t.Fatal(err)
	}
	next := []Service{desired[0], {Frontend: fe("10.96.0.9", 0)}}
	st, err = m2.Services.Reconcile(next)
	var inv *InvalidEntriesError
	if !errors.As(err, &inv) || st.Skipped != 1 {
		t.Fatalf("reconcile with an invalid service: %+v, %v", st, err)
	}
	got, err := m2.Services.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Frontend != desired[0].Frontend || len(got[0].Backends) != 2 {
		t.Fatalf("services after reconcile: %+v", got)
	}
	sl, _ := Dump[SlotKey, SlotValue](m2.Services.slot)
	bs, _ := Dump[uint32, BackendValue](m2.Services.be)
	if len(sl) != 2 || len(bs) != 2 {
		t.Fatalf("%d slots and %d backends left, want 2 and 2", len(sl), len(bs))
	}
}

func TestServiceValidation(t *testing.T) {
	for name, svc := range map[string]Service{
		"no address":       {Frontend: Frontend{Port: 80, Protocol: ProtoTCP}},
		"no port":          {Frontend: fe("10.96.0.1", 0)},
		"icmp":             {Frontend: Frontend{Addr: netip.MustParseAddr("10.96.0.1"), Port: 1, Protocol: ProtoICMP}},
		"mixed families":   {Frontend: fe("10.96.0.1", 80), Backends: []Backend{be("fd00::1", 80, 1, true)}},
		"backend port 0":   {Frontend: fe("10.96.0.1", 80), Backends: []Backend{be("10.0.0.1", 0, 1, true)}},
		"unknown affinity": {Frontend: fe("10.96.0.1", 80), Affinity: 7},
	} {
		if _, _, _, err := layout(svc); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A v4-mapped frontend is the IPv4 service.
	k1, _, _, err := layout(Service{Frontend: fe("::ffff:10.96.0.1", 80)})
	k2, _, _, _ := layout(Service{Frontend: fe("10.96.0.1", 80)})
	if err != nil || k1 != k2 {
		t.Errorf("mapped frontend key %+v differs from %+v (%v)", k1, k2, err)
	}
}
