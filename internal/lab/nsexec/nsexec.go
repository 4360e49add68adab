// Package nsexec creates and removes named network namespaces and starts
// processes inside a network namespace and a cgroup: lab kubelets in their
// node, pod workloads in their pod, and the commands of `isthmus lab exec`.
//
// A Go program cannot move all its threads into another network namespace,
// so the child is forked from one locked OS thread that has entered the
// namespace; the child then lives in it entirely. The thread returns to its
// original namespace before it is unlocked, so no other goroutine runs in the
// wrong namespace, and the thread stays alive, which matters because a
// child's Pdeathsig fires when the thread that forked it exits.
//
// It must not import other isthmus packages.
package nsexec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Where says where a process runs.
type Where struct {
	// Netns is the path of a network namespace (e.g. /run/netns/x); empty
	// means the caller's.
	Netns string
	// Cgroup is an open cgroup directory the child starts in (clone3
	// CLONE_INTO_CGROUP), so it never runs elsewhere; nil means the
	// caller's cgroup.
	Cgroup *os.File
}

// Start starts cmd where w says. cmd.SysProcAttr is kept, with the cgroup
// fields set from w.
func Start(cmd *exec.Cmd, w Where) error {
	if w.Cgroup != nil {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(w.Cgroup.Fd())
	}
	if w.Netns == "" {
		return cmd.Start()
	}
	return Do(w.Netns, cmd.Start)
}

// Do runs fn on an OS thread that is inside the network namespace at path,
// and returns fn's error. Sockets fn opens and processes it forks belong to
// that namespace; fn must not start goroutines that expect to be in it.
func Do(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread is unlocked only once it is back in its own
		// namespace; otherwise it exits with this goroutine.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(fnErr, fmt.Errorf("return from network namespace %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// Dir is where named network namespaces are mounted, as iproute2 does.
const Dir = "/run/netns"

// Path is the path of the named network namespace name.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create makes a new network namespace mounted at Path(name), with its
// loopback up, without moving the caller. An existing namespace of that name
// is an error.
func Create(name string) error {
	if _, err := os.Stat(Path(name)); err == nil {
		return fmt.Errorf("create network namespace %s: %w", name, fs.ErrExist)
	}
	errc := make(chan error, 1)
	go func() {
		// netns.NewNamed moves the calling thread into the new
		// namespace; the thread is unlocked only once it is back.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("create network namespace %s: %w", name, err)
			return
		}
		ns.Close()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("return from network namespace %s: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return err
	}
	return setLoopbackUp(name)
}

// Delete unmounts and removes the named network namespace; the namespace
// itself goes away with its last process. A missing one is not an error.
func Delete(name string) error {
	p := Path(name)
	if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("unmount network namespace %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove network namespace %s: %w", name, err)
	}
	return nil
}

// List returns the names of the named network namespaces that start with
// prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func setLoopbackUp(name string) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", name, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("bring up lo in %s: %w", name, err)
	}
	return nil
}
