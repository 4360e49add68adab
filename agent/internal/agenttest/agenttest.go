// Package agenttest holds helpers for the agent's tests that use real
// kernel objects: a unique bpffs pin directory per test, removed with its
// pins at cleanup, because several test binaries share one bpffs.
//
// Only tests import it. It must not import apiserver/.
package agenttest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// Suffix returns a random hex string for unique kernel object names.
func Suffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// PinRoot requires root, and returns a fresh directory under the machine's
// bpffs, removed with everything pinned in it when the test ends. Under
// -short (the unit tier) it skips tb: real maps are integration.
func PinRoot(tb testing.TB) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("agenttest: uses real pinned BPF maps; not part of the unit tier (-short)")
	}
	privileged.Require(tb)
	if ok, err := bpffs.IsBPFFS(bpffs.DefaultMountpoint); err != nil || !ok {
		privileged.Unavailable(tb, "no bpffs mounted at "+bpffs.DefaultMountpoint)
	}
	dir := filepath.Join(bpffs.DefaultMountpoint, "isthmus-agent-test-"+Suffix())
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("remove pins: %v", err)
		}
	})
	return dir
}
