package helmbin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/kubebin"
)

// Version is the pinned Helm release: the one place it is pinned.
const Version = "v3.22.0"

// module is the package `go install` builds.
const module = "helm.sh/helm/v3/cmd/helm"

// Options configure Ensure. The zero value builds into the default cache
// quietly.
type Options struct {
	// Progress receives a line when a build starts and when it ends. Nil
	// discards them.
	Progress io.Writer
	// CacheDir is the cache root. Empty means kubebin.CacheRoot().
	CacheDir string
	// GoCommand is the go command to build with. Empty means "go" on PATH.
	GoCommand string
}

// Ensure returns the path of the cached helm binary of Version, building
// it first when it is not cached (about a minute and a half with a warm Go
// build cache on an idle 2-core machine). Concurrent callers, in this
// process or others, share one build: the first takes a file lock and
// installs into a temporary directory that is renamed into place when
// complete. ctx bounds the build.
//
// Safe for concurrent use.
func Ensure(ctx context.Context, opts Options) (string, error) {
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	root := opts.CacheDir
	if root == "" {
		var err error
		if root, err = kubebin.CacheRoot(); err != nil {
			return "", err
		}
	}
	helmDir := filepath.Join(root, "helm")
	dir := filepath.Join(helmDir, Version)
	bin := filepath.Join(dir, "helm")
	if executable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(helmDir, 0o755); err != nil {
		return "", fmt.Errorf("create cache directory: %w; set %s to a writable directory", err, kubebin.EnvCacheDir)
	}
	unlock, err := lock(ctx, dir+".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if executable(bin) { // built by whoever held the lock
		return bin, nil
	}

	goCmd := opts.GoCommand
	if goCmd == "" {
		goCmd = "go"
	}
	if goCmd, err = exec.LookPath(goCmd); err != nil {
		return "", fmt.Errorf("build helm %s: the go command is not on PATH; install Go or add it to PATH: %w", Version, err)
	}
	tmp, err := os.MkdirTemp(helmDir, ".build-"+Version+"-")
	if err != nil {
		return "", fmt.Errorf("create build directory: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed into place
	fmt.Fprintf(progress, "helmbin: building helm %s with go install (not yet in the cache %s); this happens once per version\n", Version, dir)
	start := time.Now()
	cmd := exec.CommandContext(ctx, goCmd, "install", module+"@"+Version)
	// Outside any module, so that only Helm's own go.mod counts.
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Join(tmp, "bin"), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-buildvcs=false")
	cmd.WaitDelay = 10 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("build helm %s: stopped: %w", Version, context.Cause(ctx))
		}
		return "", fmt.Errorf("build helm %s: go install %s@%s: %w\n%s", Version, module, Version, err, tail(out, 4096))
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp made it private
		return "", err
	}
	// The binary goes to tmp/bin; the cache entry is tmp itself, renamed.
	if err := os.Rename(filepath.Join(tmp, "bin", "helm"), filepath.Join(tmp, "helm")); err != nil {
		return "", fmt.Errorf("build helm %s: no binary after go install: %w", Version, err)
	}
	_ = os.Remove(filepath.Join(tmp, "bin"))
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("move helm into the cache: %w", err)
	}
	fmt.Fprintf(progress, "helmbin: built helm %s in %s into %s\n", Version, time.Since(start).Round(time.Second), dir)
	return bin, nil
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// lockPollInterval is how often a process waiting for another one's build
// retries the lock; flock(2) cannot be interrupted by a context.
const lockPollInterval = 250 * time.Millisecond

// lock takes an exclusive flock on path, waiting while another process
// holds it. The lock dies with the process.
func lock(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	ticker := time.NewTicker(lockPollInterval)
	defer ticker.Stop()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("wait for another process building helm %s: %w", Version, context.Cause(ctx))
		case <-ticker.C:
		}
	}
}
