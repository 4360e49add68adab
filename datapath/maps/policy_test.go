package maps

import (
	"errors"
	"testing"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

func TestPolicyReconcileAndValidation(t *testing.T) {
	m := openMaps(t, smallConfig(bpffstest.PinRoot(t)))
	ok1 := PolicyEntryKey{Direction: Ingress, LocalIdentity: 300, RemoteIdentity: 70000, Port: 80, Protocol: ProtoTCP}
	ok2 := PolicyEntryKey{Direction: Egress, LocalIdentity: 300}
	desired := map[PolicyEntryKey]PolicyEntry{
		ok1: {Verdict: Allow, RuleID: 7},
		ok2: {Verdict: Deny, RuleID: 8},
		{Direction: Ingress, LocalIdentity: 300, Port: 80}:                {Verdict: Allow}, // port without protocol
		{Direction: 3, LocalIdentity: 300}:                                {Verdict: Allow},
		{Direction: Ingress, RemoteIdentity: 5}:                           {Verdict: Allow},
		{Direction: Ingress, LocalIdentity: 301, RemoteIdentity: 1 << 24}: {Verdict: Allow},
		{Direction: Ingress, LocalIdentity: 302, Protocol: ProtoUDP}:      {Verdict: 9},
	}
	st, err := m.Policy.Reconcile(desired)
	var inv *InvalidEntriesError
	if !errors.As(err, &inv) || len(inv.Errs) != 5 {
		t.Fatalf("error %v, want 5 invalid entries", err)
	}
	if st.Added != 2 {
		t.Fatalf("stats %+v, want the 2 valid entries added", st)
	}
	got, err := m.Policy.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[ok1] != (PolicyEntry{Verdict: Allow, RuleID: 7}) || got[ok2] != (PolicyEntry{Verdict: Deny, RuleID: 8}) {
		t.Fatalf("policy map holds %+v", got)
	}
	if err := m.Policy.Delete(ok1); err != nil {
		t.Fatal(err)
	}
	if err := m.Policy.Delete(ok1); err != nil {
		t.Fatalf("deleting an absent entry: %v", err)
	}
}

func TestEnforcementAndConfig(t *testing.T) {
	m := openMaps(t, smallConfig(bpffstest.PinRoot(t)))
	st, err := m.Enforcement.Reconcile(map[protocol.NumericIdentity]Enforced{
		300: {Ingress: true},
		301: {Egress: true},
		302: {},
	})
	if err != nil || st.Added != 2 {
		t.Fatalf("enforcement reconcile %+v %v, want 2 added (the all-false one left out)", st, err)
	}
	if err := m.Enforcement.Set(300, Enforced{}); err != nil {
		t.Fatal(err)
	}
	all, err := Dump[uint32, PolicyEnforcement](m.Enforcement.Map())
	if err != nil || len(all) != 1 || all[301].Egress != 1 {
		t.Fatalf("enforcement map %+v %v", all, err)
	}

	s, err := m.Config.Get()
	if err != nil || s != (MeshSettings{}) {
		t.Fatalf("fresh config %+v %v, want the zero value", s, err)
	}
	if _, err := m.Config.Update(func(s *MeshSettings) { s.DefaultDeny, s.ClusterID, s.NoNewFlowEvents = true, 7, true }); err != nil {
		t.Fatal(err)
	}
	rev, err := m.Config.BumpPolicyRevision()
	if err != nil || rev != 1 {
		t.Fatalf("bump: %d %v", rev, err)
	}
	var raw MeshConfig
	if err := m.Config.Map().Lookup(uint32(0), &raw); err != nil {
		t.Fatal(err)
	}
	if raw != (MeshConfig{DefaultDeny: 1, FlowEventsOff: 2, ClusterID: 7, PolicyRevision: 1}) {
		t.Fatalf("raw config %+v", raw)
	}
}
