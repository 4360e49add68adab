package cgroup_test

import (
	"context"
	"crypto/rand"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

func TestCreateKillRemove(t *testing.T) {
	privileged.Require(t)
	h, err := cgroup.Find()
	if err != nil {
		privileged.Unavailable(t, err.Error())
	}
	root := "isthmus-test-" + rand.Text()[:8]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	t.Cleanup(func() { _ = h.Remove(context.Background(), root) })

	leaf := root + "/node/inner"
	if err := h.Create(leaf); err != nil {
		t.Fatal(err)
	}
	dir, err := h.Open(leaf)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	got, err := cgroup.Of(cmd.Process.Pid)
	if err != nil || got != leaf {
		t.Fatalf("Of(child) = %q, %v; want %q", got, err, leaf)
	}
	pids, err := h.Procs(root)
	if err != nil || !slices.Contains(pids, cmd.Process.Pid) {
		t.Fatalf("Procs(%s) = %v, %v; want it to hold %d", root, pids, err, cmd.Process.Pid)
	}
	if err := h.Remove(ctx, root); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err == nil {
		t.Error("sleep exited cleanly; want it killed")
	}
	if h.Exists(root) || h.Exists(leaf) {
		t.Error("cgroup still exists after Remove")
	}
	if err := h.Remove(ctx, root); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

func TestOfSelf(t *testing.T) {
	privileged.Require(t)
	if _, err := cgroup.Find(); err != nil {
		privileged.Unavailable(t, err.Error())
	}
	if _, err := cgroup.Of(syscall.Getpid()); err != nil {
		t.Fatal(err)
	}
}
