// Package bpffstest gives tests that pin real BPF objects a directory of
// their own on the machine's bpffs, removed with its pins when the test
// ends: several test binaries share one bpffs, so every test needs unique
// names.
//
// Only tests import it. It must not import apiserver/ or agent/.
package bpffstest

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

// PinRoot requires root and a mounted bpffs, and returns a fresh
// directory under it, removed with everything pinned in it when the test
// ends.
func PinRoot(tb testing.TB) string {
	tb.Helper()
	privileged.Require(tb)
	if ok, err := bpffs.IsBPFFS(bpffs.DefaultMountpoint); err != nil || !ok {
		privileged.Unavailable(tb, "no bpffs mounted at "+bpffs.DefaultMountpoint)
	}
	dir := filepath.Join(bpffs.DefaultMountpoint, "isthmus-test-"+Suffix())
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("remove pins: %v", err)
		}
	})
	return dir
}
