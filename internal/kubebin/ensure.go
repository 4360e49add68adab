package kubebin

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Options configure Ensure. The zero value builds the pinned version into
// the default cache quietly.
type Options struct {
	// Progress receives human-readable lines while a build runs: what is
	// built and why first, then the elapsed time every ProgressInterval.
	// Nil discards them.
	Progress io.Writer
	// ProgressInterval is how often a running build reports its elapsed
	// time. Zero means 30s.
	ProgressInterval time.Duration
	// CacheDir is the cache root. Empty means CacheRoot().
	CacheDir string
	// GoCommand is the go command to build with. Empty means "go" on PATH.
	GoCommand string
}

// Binaries are the paths of one version's cached control-plane binaries.
type Binaries struct {
	// Version is the Kubernetes release they were built from, e.g. "v1.37.1".
	Version           string
	Dir               string // the directory holding the three binaries
	APIServer         string // kube-apiserver
	ControllerManager string // kube-controller-manager
	Scheduler         string // kube-scheduler
}

// Ensure returns the cached control-plane binaries of KubernetesVersion,
// building them first when they are not cached. Concurrent callers, in this
// process or others, share one build: the first takes a file lock and
// builds into a temporary directory that is renamed into place when
// complete; the others wait for the lock and find the result. A cold build
// takes minutes; ctx bounds it, and cancelling it stops the go command.
//
// Safe for concurrent use.
func Ensure(ctx context.Context, opts Options) (Binaries, error) {
	version := KubernetesVersion
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	// One writer may be shared with the progress goroutine.
	progress = &syncWriter{w: progress}

	root := opts.CacheDir
	if root == "" {
		var err error
		if root, err = CacheRoot(); err != nil {
			return Binaries{}, err
		}
	}
	kubeDir := filepath.Join(root, "kube")
	key := cacheKey(version)
	dir := filepath.Join(kubeDir, key)
	bins := binariesIn(version, dir)
	if bins.complete() {
		return bins, nil
	}

	if err := os.MkdirAll(kubeDir, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("create cache directory: %w; set %s to a writable directory", err, EnvCacheDir)
	}
	what := "Kubernetes " + version + " control-plane binaries"
	unlock, err := lockFile(ctx, dir+".lock", progress, what)
	if err != nil {
		return Binaries{}, err
	}
	defer unlock()
	if bins.complete() { // built by whoever held the lock
		return bins, nil
	}

	goCmd, err := lookGo(opts.GoCommand)
	if err != nil {
		return Binaries{}, fmt.Errorf("build %s: %w", what, err)
	}
	interval := opts.ProgressInterval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	b := builder{goCmd: goCmd, version: version, kubeDir: kubeDir, key: key, progress: progress, interval: interval}
	if err := b.build(ctx, dir); err != nil {
		return Binaries{}, fmt.Errorf("build %s: %w", what, err)
	}
	if !bins.complete() {
		return Binaries{}, fmt.Errorf("build %s: binaries missing from %s after the build", what, dir)
	}
	return bins, nil
}

func binariesIn(version, dir string) Binaries {
	bin := filepath.Join(dir, "bin")
	return Binaries{
		Version:           version,
		Dir:               bin,
		APIServer:         filepath.Join(bin, "kube-apiserver"),
		ControllerManager: filepath.Join(bin, "kube-controller-manager"),
		Scheduler:         filepath.Join(bin, "kube-scheduler"),
	}
}

func (b Binaries) complete() bool {
	for _, p := range []string{b.APIServer, b.ControllerManager, b.Scheduler} {
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// lookGo finds the go command, with an error that says what to do.
func lookGo(name string) (string, error) {
	if name == "" {
		name = "go"
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("the go command %q is not on PATH: building the control plane from k8s.io/kubernetes needs Go %s or newer (https://go.dev/dl/); install it or add it to PATH: %w",
			name, goVersionNeeded(), err)
	}
	return p, nil
}

// goVersionNeeded reads the go directive of the embedded module.
func goVersionNeeded() string {
	for _, line := range strings.Split(string(moduleGoMod), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go "); ok {
			return v
		}
	}
	return "1.26"
}

// builder runs one build under the cache lock.
type builder struct {
	goCmd    string
	version  string
	kubeDir  string
	key      string
	progress io.Writer
	interval time.Duration
}

func (b builder) build(ctx context.Context, dir string) error {
	// Temporary directories of builds that crashed; safe to remove under
	// the lock, which only this key's builder holds.
	if stale, _ := filepath.Glob(filepath.Join(b.kubeDir, ".build-"+b.key+"-*")); len(stale) > 0 {
		for _, s := range stale {
			_ = os.RemoveAll(s)
		}
	}
	tmp, err := os.MkdirTemp(b.kubeDir, ".build-"+b.key+"-")
	if err != nil {
		return fmt.Errorf("create build directory: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed into place

	modDir := filepath.Join(tmp, "module")
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(modDir, "go.mod"), moduleGoMod, 0o644); err != nil {
		return fmt.Errorf("write tool module: %w", err)
	}
	if err := os.WriteFile(filepath.Join(modDir, "go.sum"), moduleGoSum, 0o644); err != nil {
		return fmt.Errorf("write tool module: %w", err)
	}
	logPath := filepath.Join(tmp, "build.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("create build log: %w", err)
	}
	defer logFile.Close()

	cmd := exec.CommandContext(ctx, b.goCmd, buildArgs(b.version, filepath.Join(tmp, "bin"))...)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(),
		"CGO_ENABLED=0",
		"GOWORK=off",
		"GOFLAGS=-mod=readonly -buildvcs=false",
	)
	tail := &tailBuffer{max: 4096}
	cmd.Stdout = io.MultiWriter(logFile, tail)
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = dieWithParent()
	cmd.WaitDelay = 10 * time.Second

	fmt.Fprintf(b.progress, "kubebin: building %s %s from k8s.io/kubernetes (not yet in the cache %s); this happens once per version and takes 5 to 10 minutes on an idle 2-core machine, much longer when the CPU is busy\n",
		componentNames(), b.version, dir)
	start := time.Now()
	err = runWithProgress(ctx, cmd, b.interval, func(elapsed time.Duration) {
		fmt.Fprintf(b.progress, "kubebin: still building Kubernetes %s (%s elapsed)\n", b.version, elapsed.Round(time.Second))
	})
	elapsed := time.Since(start).Round(time.Second)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("stopped after %s: %w", elapsed, context.Cause(ctx))
		}
		return fmt.Errorf("go build failed after %s: %w\n%s", elapsed, err, strings.TrimSpace(tail.String()))
	}
	if err := logFile.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp made it private
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("move the binaries into the cache: %w", err)
	}
	fmt.Fprintf(b.progress, "kubebin: built Kubernetes %s in %s into %s\n", b.version, elapsed, dir)
	return nil
}

// runWithProgress runs cmd, calling report every interval until it ends.
// The command is started from a fresh goroutine: Pdeathsig fires when the
// starting OS thread exits, and a goroutine locked to a thread (network
// namespace code does that) may take its thread with it.
func runWithProgress(ctx context.Context, cmd *exec.Cmd, interval time.Duration, report func(time.Duration)) error {
	started := make(chan error, 1)
	go func() { started <- cmd.Start() }()
	if err := <-started; err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	start := time.Now()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-ticker.C:
			report(time.Since(start))
		}
	}
}

// syncWriter serialises writes to a caller's writer.
type syncWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// tailBuffer keeps the last max bytes written to it, for error messages.
type tailBuffer struct {
	mu  sync.Mutex // guards buf
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
