// Package labtest brings labs up for tests: it builds the isthmus binaries
// of the module under test (and the mesh binaries, where they exist) once
// per test binary, starts a lab with a unique name, and removes it when the
// test ends. The e2e suites use it.
//
// It must be imported by tests only.
package labtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// Binaries are the built executables a lab runs.
type Binaries struct {
	Isthmus, MeshAPIServer, Agent string
}

// Build builds ./cmd/isthmus, and ./cmd/isthmus-apiserver and
// ./cmd/isthmus-agent when the module has them, into a temporary directory
// of tb, and returns their paths. Build once per test (or in TestMain) and
// pass the result to Up; the Go build cache keeps rebuilds cheap.
func Build(tb testing.TB) Binaries {
	tb.Helper()
	bins, err := BuildTo(tb.TempDir())
	if err != nil {
		tb.Fatalf("build the lab binaries: %v", err)
	}
	return bins
}

// BuildTo is Build into dir, for callers without a testing.TB (a TestMain
// that shares one lab between tests).
func BuildTo(dir string) (Binaries, error) {
	root, err := moduleRoot()
	if err != nil {
		return Binaries{}, err
	}
	pkgs := []string{"./cmd/isthmus"}
	for _, c := range []string{"isthmus-apiserver", "isthmus-agent"} {
		if _, err := os.Stat(filepath.Join(root, "cmd", c)); err == nil {
			pkgs = append(pkgs, "./cmd/"+c)
		}
	}
	cmd := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return Binaries{}, fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out.String())
	}
	bins := Binaries{Isthmus: filepath.Join(dir, "isthmus")}
	if len(pkgs) == 3 {
		bins.MeshAPIServer, bins.Agent = filepath.Join(dir, "isthmus-apiserver"), filepath.Join(dir, "isthmus-agent")
	}
	return bins, nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the isthmus module")
	}
	return filepath.Dir(gomod), nil
}

// Options shape a test lab; zero values mean the lab defaults (2 clusters
// of 2 nodes).
type Options struct {
	Clusters, NodesPerCluster int
	// WithoutMesh leaves out isthmus-apiserver and isthmus-agent even when
	// they are built.
	WithoutMesh bool
}

// Name returns a fresh lab name for a test.
func Name() string { return "t" + strings.ToLower(rand.Text()[:7]) }

// Up brings up a lab of bins with a fresh name; the test's cleanup takes it
// down again, first copying its logs into the test's output when the test
// failed. It needs root.
func Up(tb testing.TB, bins Binaries, opts Options) *lab.Lab {
	tb.Helper()
	privileged.Require(tb)
	cfg := lab.Config{
		Isthmus:  bins.Isthmus,
		Progress: testWriter{tb},
		Timeout:  5 * time.Minute,
	}
	cfg.Name = Name()
	cfg.Clusters, cfg.NodesPerCluster = opts.Clusters, opts.NodesPerCluster
	if !opts.WithoutMesh {
		cfg.MeshAPIServer, cfg.Agent = bins.MeshAPIServer, bins.Agent
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute) // includes a first kube build
	defer cancel()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		tb.Fatalf("lab up: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			DumpLogs(tb, l)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := l.Down(ctx); err != nil {
			tb.Errorf("lab down: %v", err)
		}
	})
	return l
}

// DumpLogs writes the tail of every log of the lab into the test output.
func DumpLogs(tb testing.TB, l *lab.Lab) {
	tb.Helper()
	_ = filepath.WalkDir(string(l.Dir), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".log") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		tb.Logf("==> %s <==\n%s", p, strings.Join(lines, "\n"))
		return nil
	})
}

type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.tb.Logf("lab: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
