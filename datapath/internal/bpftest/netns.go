package bpftest

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// Netns creates a named network namespace with loopback up, deleted when
// the test ends, and returns its path (/var/run/netns/<name>).
func Netns(tb testing.TB) string {
	tb.Helper()
	privileged.Require(tb)
	name := "isthmus-test-" + Suffix()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tb.Fatalf("current netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name) // also switches this thread into it
	if err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	ns.Close()
	tb.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("delete netns %s: %v", name, err)
		}
	})
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if serr := netns.Set(orig); serr != nil {
		tb.Fatalf("return to original netns: %v", serr)
	}
	if err != nil {
		tb.Fatalf("bring up lo: %v", err)
	}
	return filepath.Join("/var/run/netns", name)
}

// InNetns runs fn on a thread switched into the network namespace at path.
// Sockets fn creates belong to that namespace for their whole life.
func InNetns(tb testing.TB, path string, fn func()) {
	tb.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tb.Fatalf("current netns: %v", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		tb.Fatalf("open netns %s: %v", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		tb.Fatalf("enter netns %s: %v", path, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// The thread is unusable; keep it locked so the runtime
			// discards it instead of reusing it.
			runtime.LockOSThread()
			tb.Errorf("return to original netns: %v", err)
		}
	}()
	fn()
}

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
	dir := filepath.Join(CgroupRoot, "isthmus-test-"+Suffix())
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
