// Package pinnedlink keeps BPF links pinned in bpffs so that attachments
// survive an agent restart, and lets a restarted agent take them over: the
// link is reused with its program swapped atomically, or replaced when it
// points somewhere else.
//
// It must not import apiserver/ or agent/.
package pinnedlink

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Ensure returns a link, pinned at path, that runs prog where create
// attaches it.
//
// If a link is pinned at path and matches reports that it is still attached
// to the intended target, its program is replaced with prog (one atomic
// BPF_LINK_UPDATE; no packet or socket call sees neither program) and that
// link is returned. Otherwise create makes a new link, which is pinned over
// the old path; the old link is released after, so there may be a moment
// with both attached but never one with none.
//
// The caller owns the returned handle; closing it leaves the attachment in
// place (the pin holds it).
func Ensure(path string, prog *ebpf.Program, matches func(*link.Info) bool, create func() (link.Link, error)) (link.Link, error) {
	old, err := link.LoadPinnedLink(path, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
		old = nil
	case err != nil:
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	if old != nil {
		info, err := old.Info()
		if err == nil && matches(info) {
			if err := old.Update(prog); err == nil {
				return old, nil
			}
			// Fall through and replace the link.
		}
	}

	l, err := create()
	if err != nil {
		if old != nil {
			old.Close()
		}
		return nil, err
	}
	// bpffs reserves dots in names.
	tmp := path + "_new"
	_ = os.Remove(tmp)
	if err := l.Pin(tmp); err != nil {
		l.Close()
		if old != nil {
			old.Close()
		}
		return nil, fmt.Errorf("pin link: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		l.Close()
		if old != nil {
			old.Close()
		}
		return nil, fmt.Errorf("pin link at %s: %w", path, err)
	}
	if old != nil {
		// Its pin is gone (renamed over); closing the last handle detaches.
		old.Close()
	}
	return l, nil
}

// Remove detaches the link pinned at path and removes the pin. Nothing
// pinned there is not an error.
func Remove(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// Not a link we can load (stale or foreign): drop the pin anyway.
		if rmErr := os.Remove(path); rmErr != nil {
			return fmt.Errorf("load pinned link %s: %w", path, err)
		}
		return nil
	}
	defer l.Close()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin link %s: %w", path, err)
	}
	// With the pin gone, closing the last handle detaches. Detach first for
	// links that other handles (another process) still hold open.
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("detach link %s: %w", path, err)
	}
	return nil
}
