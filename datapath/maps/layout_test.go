package maps

import (
	"reflect"
	"testing"

	"github.com/isthmus-mesh/isthmus/datapath/internal/bpftest"
)

// TestLayoutsMatchBTF checks every Go key and value type against the BTF of
// the compiled map definitions, so the documented layouts stay true.
func TestLayoutsMatchBTF(t *testing.T) {
	spec, err := loadMapdefs()
	if err != nil {
		t.Fatal(err)
	}
	types := map[string][2]reflect.Type{
		NameIPCache:     {reflect.TypeFor[IPCacheKey](), reflect.TypeFor[IPCacheValue]()},
		NameIPHosts:     {reflect.TypeFor[IPCacheKey](), reflect.TypeFor[IPCacheValue]()},
		NameFrontends:   {reflect.TypeFor[FrontendKey](), reflect.TypeFor[FrontendValue]()},
		NameSlots:       {reflect.TypeFor[SlotKey](), reflect.TypeFor[SlotValue]()},
		NameBackends:    {reflect.TypeFor[uint32](), reflect.TypeFor[BackendValue]()},
		NameRevNAT:      {reflect.TypeFor[RevNATKey](), reflect.TypeFor[RevNATValue]()},
		NamePolicy:      {reflect.TypeFor[PolicyKey](), reflect.TypeFor[PolicyValue]()},
		NameEnforcement: {reflect.TypeFor[uint32](), reflect.TypeFor[PolicyEnforcement]()},
		NameConfig:      {reflect.TypeFor[uint32](), reflect.TypeFor[MeshConfig]()},
		NameCT:          {reflect.TypeFor[CTKey](), reflect.TypeFor[CTValue]()},
		NameMetrics:     {reflect.TypeFor[uint32](), reflect.TypeFor[MetricValue]()},
	}
	for name, ms := range spec.Maps {
		if name == NameFlows {
			continue // no key or value; FlowRecord is checked in tunnelpolicy
		}
		kv, ok := types[name]
		if !ok {
			t.Errorf("map %s has no Go layout in this test", name)
			continue
		}
		if ms.Key == nil || ms.Value == nil {
			t.Errorf("map %s has no BTF key/value", name)
			continue
		}
		bpftest.CheckLayout(t, kv[0], ms.Key)
		bpftest.CheckLayout(t, kv[1], ms.Value)
	}
	if len(spec.Maps) != len(types)+1 {
		t.Errorf("compiled object has %d maps, the test knows %d", len(spec.Maps), len(types)+1)
	}
}
