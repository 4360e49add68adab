// Package agenttest holds helpers for the agent's tests that use real
// kernel objects: a unique bpffs pin directory per test, removed with its
// pins at cleanup, because several test binaries share one bpffs.
//
// Only tests import it. It must not import apiserver/.
package agenttest

import (
	"testing"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
)

// PinRoot is bpffstest.PinRoot, skipped under -short (the unit tier):
// real pinned maps are integration.
func PinRoot(tb testing.TB) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("agenttest: uses real pinned BPF maps; not part of the unit tier (-short)")
	}
	return bpffstest.PinRoot(tb)
}
