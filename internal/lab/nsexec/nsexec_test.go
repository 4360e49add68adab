package nsexec_test

import (
	"crypto/rand"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

func TestStartInNamespaceAndCgroup(t *testing.T) {
	privileged.Require(t)
	name := "isthmus-test-" + strings.ToLower(rand.Text()[:8])
	if err := nsexec.Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsexec.Delete(name) })
	h, err := cgroup.Find()
	if err != nil {
		privileged.Unavailable(t, err.Error())
	}
	cg := "isthmus-test-" + rand.Text()[:8]
	if err := h.Create(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Remove(t.Context(), cg) })
	dir, err := h.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()

	// The child prints its own network namespace and cgroup.
	cmd := exec.Command("sh", "-c", "readlink /proc/self/ns/net; cat /proc/self/cgroup")
	var out strings.Builder
	cmd.Stdout = &out
	if err := nsexec.Start(cmd, nsexec.Where{Netns: nsexec.Path(name), Cgroup: dir}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	ino := inodeOf(t, nsexec.Path(name))
	if want := "net:[" + strconv.FormatUint(ino, 10) + "]"; !strings.Contains(out.String(), want) {
		t.Errorf("child output %q does not show namespace %s", out.String(), want)
	}
	if !strings.Contains(out.String(), "0::/"+cg+"\n") {
		t.Errorf("child output %q does not show cgroup %s", out.String(), cg)
	}

	// The caller stays where it was.
	self, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(self, strconv.FormatUint(ino, 10)) {
		t.Error("calling thread left in the child's namespace")
	}
}

func TestCreateDeleteList(t *testing.T) {
	privileged.Require(t)
	prefix := "isthmus-test-" + strings.ToLower(rand.Text()[:8]) + "."
	for _, n := range []string{"a", "b"} {
		if err := nsexec.Create(prefix + n); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nsexec.Delete(prefix + n) })
	}
	if err := nsexec.Create(prefix + "a"); err == nil {
		t.Error("Create of an existing namespace succeeded")
	}
	// lo is up inside, so a process there can use 127.0.0.1.
	cmd := exec.Command("ip", "-o", "link", "show", "lo")
	var out strings.Builder
	cmd.Stdout = &out
	if err := nsexec.Start(cmd, nsexec.Where{Netns: nsexec.Path(prefix + "a")}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil || !strings.Contains(out.String(), "UP") {
		t.Errorf("lo in new namespace: %q, %v", out.String(), err)
	}
	names, err := nsexec.List(prefix)
	if err != nil || len(names) != 2 {
		t.Fatalf("List = %v, %v", names, err)
	}
	for _, n := range names {
		if err := nsexec.Delete(n); err != nil {
			t.Fatal(err)
		}
		if err := nsexec.Delete(n); err != nil {
			t.Errorf("second Delete: %v", err)
		}
	}
	if names, _ := nsexec.List(prefix); len(names) != 0 {
		t.Errorf("after Delete: %v", names)
	}
}
