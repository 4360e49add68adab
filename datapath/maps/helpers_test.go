package maps

import (
	"net/netip"
	"testing"
)

// smallConfig keeps test maps small: several test binaries share the machine.
func smallConfig(root string) Config {
	return Config{
		Root:                  root,
		IPCacheMaxEntries:     1024,
		FrontendMaxEntries:    256,
		SlotMaxEntries:        1024,
		BackendMaxEntries:     512,
		RevNATMaxEntries:      256,
		PolicyMaxEntries:      512,
		EnforcementMaxEntries: 256,
		CTMaxEntries:          256,
		FlowRingBytes:         16 * 1024,
	}
}

func openMaps(t *testing.T, cfg Config) *Maps {
	t.Helper()
	m, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
