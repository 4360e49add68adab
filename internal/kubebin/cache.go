package kubebin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// EnvCacheDir overrides where Isthmus caches built artifacts.
const EnvCacheDir = "ISTHMUS_CACHE_DIR"

// CacheRoot returns the directory Isthmus caches built artifacts in:
// $ISTHMUS_CACHE_DIR, else $XDG_CACHE_HOME/isthmus, else ~/.cache/isthmus.
// The control-plane binaries live under its kube/ subdirectory.
func CacheRoot() (string, error) {
	if dir := os.Getenv(EnvCacheDir); dir != "" {
		return filepath.Abs(dir)
	}
	if dir := os.Getenv("XDG_CACHE_HOME"); dir != "" {
		return filepath.Join(dir, "isthmus"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the cache directory: %w; set %s", err, EnvCacheDir)
	}
	return filepath.Join(home, ".cache", "isthmus"), nil
}

// lockPollInterval is how often a process waiting for another one's build
// retries the lock. flock(2) cannot be interrupted by a context, so waiting
// is a poll.
const lockPollInterval = 250 * time.Millisecond

// lockFile takes an exclusive flock on path, waiting while another process
// holds it and telling progress once that it waits. The lock dies with the
// process, so a crashed build never leaves it stuck.
func lockFile(ctx context.Context, path string, progress io.Writer, what string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	unlock = func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}
	var ticker *time.Ticker
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			if ticker != nil {
				ticker.Stop()
			}
			return unlock, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if ticker == nil {
			fmt.Fprintf(progress, "kubebin: waiting for another process building %s (lock %s)\n", what, path)
			ticker = time.NewTicker(lockPollInterval)
		}
		select {
		case <-ctx.Done():
			ticker.Stop()
			_ = f.Close()
			return nil, fmt.Errorf("wait for another process building %s: %w", what, context.Cause(ctx))
		case <-ticker.C:
		}
	}
}
