package bpftest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// CgroupRoot is the cgroup v2 hierarchy on this machine.
const CgroupRoot = "/sys/fs/cgroup/unified"

// Cgroup creates an empty cgroup v2 directory with a unique name, removed
// when the test ends (after the processes in it have exited).
func Cgroup(tb testing.TB) string {
	tb.Helper()
	privileged.Require(tb)
	if _, err := os.Stat(filepath.Join(CgroupRoot, "cgroup.procs")); err != nil {
		privileged.Unavailable(tb, "no cgroup v2 hierarchy at "+CgroupRoot)
	}
	dir := filepath.Join(CgroupRoot, "isthmus-test-"+bpffstest.Suffix())
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatalf("create cgroup: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			tb.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	return dir
}
