// Package cgroup manages the lab's cgroup v2 directories: one per node, whose
// processes (lab kubelet, pods, agent, commands run by lab exec) the socket
// load balancer hooks, and one for the supervisor, whose children inherit it.
// Killing a lab's cgroup subtree is how a lab left over from a crash loses
// every process it had, whoever started them.
//
// It must not import other isthmus packages.
package cgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Hierarchy is a mounted cgroup v2 hierarchy. Its methods take paths
// relative to the mount. It is safe for concurrent use.
type Hierarchy struct {
	// Root is the mount point, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified.
	Root string
}

// Find returns the machine's cgroup v2 hierarchy, read from the mount table.
func Find() (Hierarchy, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return Hierarchy{}, fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return findIn(f)
}

func findIn(f *os.File) (Hierarchy, error) {
	s := bufio.NewScanner(f)
	for s.Scan() {
		// mountinfo: id parent major:minor root mountpoint opts ... - fstype source superopts
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		fields, postFields := strings.Fields(pre), strings.Fields(post)
		if len(fields) >= 5 && len(postFields) >= 1 && postFields[0] == "cgroup2" {
			return Hierarchy{Root: fields[4]}, nil
		}
	}
	if err := s.Err(); err != nil {
		return Hierarchy{}, fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return Hierarchy{}, errors.New("no cgroup v2 hierarchy is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) and retry")
}

// Path is the absolute path of rel.
func (h Hierarchy) Path(rel string) string { return filepath.Join(h.Root, rel) }

// Create makes rel and its parents; an existing cgroup is fine.
func (h Hierarchy) Create(rel string) error {
	if err := os.MkdirAll(h.Path(rel), 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", rel, err)
	}
	return nil
}

// Exists reports whether rel exists.
func (h Hierarchy) Exists(rel string) bool {
	_, err := os.Stat(filepath.Join(h.Path(rel), "cgroup.procs"))
	return err == nil
}

// Open opens rel as a directory, for clone3's CLONE_INTO_CGROUP
// (syscall.SysProcAttr.CgroupFD). The caller closes it.
func (h Hierarchy) Open(rel string) (*os.File, error) {
	f, err := os.OpenFile(h.Path(rel), os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", rel, err)
	}
	return f, nil
}

// Move puts process pid into rel.
func (h Hierarchy) Move(rel string, pid int) error {
	if err := os.WriteFile(filepath.Join(h.Path(rel), "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("move process %d into cgroup %s: %w", pid, rel, err)
	}
	return nil
}

// Procs lists the processes in rel and below it.
func (h Hierarchy) Procs(rel string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(h.Path(rel), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list processes of cgroup %s: %w", rel, err)
	}
	slices.Sort(pids)
	return pids, nil
}

// Kill kills every process in rel and below it, and waits until none is
// left or ctx ends. A missing cgroup has nothing to kill.
func (h Hierarchy) Kill(ctx context.Context, rel string) error {
	if !h.Exists(rel) {
		return nil
	}
	err := os.WriteFile(filepath.Join(h.Path(rel), "cgroup.kill"), []byte("1"), 0)
	if errors.Is(err, fs.ErrNotExist) && h.Exists(rel) {
		// Kernels before 5.14 have no cgroup.kill: signal one by one.
		err = h.killEach(rel)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kill cgroup %s: %w", rel, err)
	}
	return h.waitEmpty(ctx, rel)
}

func (h Hierarchy) killEach(rel string) error {
	for range 10 { // new children may appear while killing
		pids, err := h.Procs(rel)
		if err != nil || len(pids) == 0 {
			return err
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return nil
}

func (h Hierarchy) waitEmpty(ctx context.Context, rel string) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		pids, err := h.Procs(rel)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup %s still holds processes %v: %w", rel, pids, ctx.Err())
		case <-tick.C:
		}
	}
}

// Remove kills every process in rel and below it and removes the cgroups,
// deepest first. A missing cgroup is not an error, so Remove is safe to
// repeat.
func (h Hierarchy) Remove(ctx context.Context, rel string) error {
	if !h.Exists(rel) {
		return nil
	}
	if err := h.Kill(ctx, rel); err != nil {
		return err
	}
	var dirs []string
	err := filepath.WalkDir(h.Path(rel), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", rel, err)
	}
	for _, d := range slices.Backward(dirs) {
		if err := removeDir(ctx, d); err != nil {
			return fmt.Errorf("remove cgroup %s: %w", rel, err)
		}
	}
	return nil
}

// removeDir retries EBUSY: a killed process leaves its cgroup a moment
// after it is reaped.
func removeDir(ctx context.Context, dir string) error {
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (%w)", dir, err, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Of returns the cgroup (relative to the hierarchy) of process pid.
func Of(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return "", fmt.Errorf("read cgroup of process %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return strings.TrimPrefix(rest, "/"), nil
		}
	}
	return "", fmt.Errorf("process %d has no cgroup v2 entry", pid)
}
