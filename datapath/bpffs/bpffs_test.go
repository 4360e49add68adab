package bpffs

import (
	"errors"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

func TestMountIsIdempotent(t *testing.T) {
	privileged.Require(t)
	mnt := filepath.Join(t.TempDir(), "bpf")
	if err := Mount(mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })

	ok, err := IsBPFFS(mnt)
	if err != nil || !ok {
		t.Fatalf("IsBPFFS(%s) = %v, %v after Mount; want true", mnt, ok, err)
	}
	// A second Mount must not stack another filesystem on top.
	if err := Mount(mnt); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if ok, _ := IsBPFFS(mnt); ok {
		t.Fatal("still bpffs after one unmount: Mount stacked a second filesystem")
	}
}

func TestEnsureDir(t *testing.T) {
	privileged.Require(t)
	mnt := filepath.Join(t.TempDir(), "bpf")
	if err := Mount(mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })

	if err := EnsureDir(filepath.Join(mnt, "isthmus", "node-a")); err != nil {
		t.Fatal(err)
	}
	err := EnsureDir(filepath.Join(t.TempDir(), "plain"))
	if !errors.Is(err, ErrNotBPFFS) {
		t.Fatalf("EnsureDir on a plain directory: got %v, want ErrNotBPFFS", err)
	}
	if err := EnsureDir("relative/dir"); err == nil {
		t.Fatal("EnsureDir accepted a relative path")
	}
}
