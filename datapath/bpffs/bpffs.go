// Package bpffs mounts the BPF filesystem and checks that pin directories
// live on one. Pins are how Isthmus maps and attachments outlive an agent
// restart, and a pin path on any other filesystem fails with an obscure
// error, so callers check up front.
//
// It must not import anything from the rest of the module.
package bpffs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DefaultMountpoint is where the BPF filesystem is conventionally mounted.
const DefaultMountpoint = "/sys/fs/bpf"

// ErrNotBPFFS is returned when a path is not on a BPF filesystem.
var ErrNotBPFFS = errors.New("not on a bpf filesystem")

// IsBPFFS reports whether path lies on a mounted BPF filesystem.
func IsBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}

// Mount mounts a BPF filesystem at mountpoint, creating the directory, unless
// one is mounted there already. It is safe to call on every start.
func Mount(mountpoint string) error {
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return fmt.Errorf("create bpffs mountpoint: %w", err)
	}
	ok, err := IsBPFFS(mountpoint)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	if err := unix.Mount("bpffs", mountpoint, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s (needs CAP_SYS_ADMIN): %w", mountpoint, err)
	}
	return nil
}

// EnsureDir creates dir (and its parents) and checks that it is on a BPF
// filesystem, so that objects can be pinned in it.
func EnsureDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("pin directory %q: must be an absolute path", dir)
	}
	// Check the nearest existing ancestor first: MkdirAll on a plain
	// filesystem would otherwise leave stray directories behind.
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	ok, err := IsBPFFS(probe)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("pin directory %s: %s %w; mount one there (bpffs.Mount) or pick a directory under %s",
			dir, probe, ErrNotBPFFS, DefaultMountpoint)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	return nil
}
