package kubebin

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestModulePinned checks that the embedded tool module was generated from
// KubernetesVersion: run `make kube-pin` after moving the pin.
func TestModulePinned(t *testing.T) {
	mod := string(moduleGoMod)
	required := false
	for _, line := range strings.Split(mod, "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		required = required || len(f) >= 2 && f[0] == "k8s.io/kubernetes" && f[1] == KubernetesVersion
	}
	if !required {
		t.Errorf("module/go.mod.txt does not require k8s.io/kubernetes %s; run `make kube-pin`", KubernetesVersion)
	}
	staging := StagingVersion(KubernetesVersion)
	replaces := 0
	for _, line := range strings.Split(mod, "\n") {
		from, to, ok := strings.Cut(strings.TrimSpace(line), " => ")
		if !ok {
			continue
		}
		replaces++
		if want := from + " " + staging; to != want {
			t.Errorf("replace %s => %s, want => %s; run `make kube-pin`", from, to, want)
		}
	}
	// Every staging module k8s.io/kubernetes requires at v0.0.0 must be
	// replaced, or the module does not resolve; there are 30-odd.
	if replaces < 20 {
		t.Errorf("module/go.mod.txt has %d replace directives, want one per k8s.io staging module", replaces)
	}
	for _, c := range components {
		if !strings.Contains(mod, "\t"+c.pkg()+"\n") {
			t.Errorf("module/go.mod.txt does not declare tool %s", c.pkg())
		}
	}
	if !bytes.Contains(moduleGoSum, []byte("k8s.io/kubernetes "+KubernetesVersion+" h1:")) {
		t.Errorf("module/go.sum.txt has no hash for k8s.io/kubernetes %s", KubernetesVersion)
	}
}

func TestStagingVersion(t *testing.T) {
	for in, want := range map[string]string{"v1.37.2": "v0.37.2", "v1.40.0-rc.1": "v0.40.0-rc.1", "v2.0.0": "v2.0.0"} {
		if got := StagingVersion(in); got != want {
			t.Errorf("StagingVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCacheRoot(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv(EnvCacheDir, "")
	t.Setenv("XDG_CACHE_HOME", "")
	check := func(want string) {
		t.Helper()
		got, err := CacheRoot()
		if err != nil || got != want {
			t.Errorf("CacheRoot() = %q, %v; want %q", got, err, want)
		}
	}
	check(filepath.Join(home, ".cache", "isthmus"))
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	check("/xdg/isthmus")
	t.Setenv(EnvCacheDir, "/explicit")
	check("/explicit")
}

func TestCacheKeyChangesWithVersion(t *testing.T) {
	a, b := cacheKey("v1.37.1"), cacheKey("v1.37.2")
	if a == b || !strings.HasPrefix(a, "v1.37.1-") {
		t.Errorf("cache keys %q and %q: want distinct, prefixed by the version", a, b)
	}
}

func TestEnsureWithoutGo(t *testing.T) {
	_, err := Ensure(context.Background(), Options{CacheDir: t.TempDir(), GoCommand: "isthmus-no-such-go"})
	if err == nil || !strings.Contains(err.Error(), "not on PATH") || !strings.Contains(err.Error(), "go.dev/dl") {
		t.Fatalf("Ensure without a go command: err = %v, want one saying go is not on PATH and where to get it", err)
	}
}

// fakeGo writes a go command that "builds" by creating the output files
// and counting its runs, to test the cache and lock logic without a
// four-minute compile.
func fakeGo(t *testing.T) (goCmd, runs string) {
	dir := t.TempDir()
	runs = filepath.Join(dir, "runs")
	goCmd = filepath.Join(dir, "go")
	script := `#!/bin/sh
echo run >> ` + runs + `
out=
while [ $# -gt 0 ]; do
	if [ "$1" = -o ]; then out=$2; fi
	shift
done
[ -f go.mod ] && [ -f go.sum ] || { echo "module files missing" >&2; exit 1; }
mkdir -p "$out"
for b in kube-apiserver kube-controller-manager kube-scheduler; do
	printf '#!/bin/sh\necho fake\n' > "$out/$b"; chmod +x "$out/$b"
done
`
	if err := os.WriteFile(goCmd, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return goCmd, runs
}

func TestEnsureBuildsOnceUnderConcurrency(t *testing.T) {
	goCmd, runs := fakeGo(t)
	cache := t.TempDir()
	var progress bytes.Buffer
	var mu sync.Mutex
	var wg sync.WaitGroup
	results := make([]Binaries, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Go(func() {
			var p bytes.Buffer
			results[i], errs[i] = Ensure(context.Background(), Options{CacheDir: cache, GoCommand: goCmd, Progress: &p})
			mu.Lock()
			progress.Write(p.Bytes())
			mu.Unlock()
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Ensure #%d: %v", i, err)
		}
		if results[i] != results[0] {
			t.Errorf("Ensure #%d = %+v, want %+v", i, results[i], results[0])
		}
	}
	data, err := os.ReadFile(runs)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "run"); n != 1 {
		t.Errorf("go ran %d times for 4 concurrent Ensure calls, want 1", n)
	}
	if !strings.Contains(progress.String(), "kubebin: building kube-apiserver") {
		t.Errorf("progress %q does not say what is being built", progress.String())
	}
	b := results[0]
	if b.Version != KubernetesVersion || filepath.Dir(b.APIServer) != b.Dir || !strings.HasPrefix(b.Dir, filepath.Join(cache, "kube", KubernetesVersion)) {
		t.Errorf("Binaries = %+v: want version %s under %s", b, KubernetesVersion, cache)
	}
	leftovers, _ := filepath.Glob(filepath.Join(cache, "kube", ".build-*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary build directories left behind: %v", leftovers)
	}
}

func TestEnsureReportsBuildFailure(t *testing.T) {
	dir := t.TempDir()
	goCmd := filepath.Join(dir, "go")
	if err := os.WriteFile(goCmd, []byte("#!/bin/sh\necho 'cannot find module providing package' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	_, err := Ensure(context.Background(), Options{CacheDir: cache, GoCommand: goCmd})
	if err == nil || !strings.Contains(err.Error(), "cannot find module providing package") {
		t.Fatalf("err = %v, want the go command's output in it", err)
	}
	if entries, _ := filepath.Glob(filepath.Join(cache, "kube", "v*")); len(entries) != 1 { // only the lock file
		t.Errorf("cache after a failed build holds %v, want only the lock file", entries)
	}
}

// TestEnsureBuildsRealBinaries builds (or finds cached) the real control
// plane and checks the binaries report the pinned version. Cold, this
// takes minutes: `make kube` warms the cache.
func TestEnsureBuildsRealBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Kubernetes; not part of the unit tier (-short)")
	}
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-10*time.Second))
		defer cancel()
	}
	start := time.Now()
	bins, err := Ensure(ctx, Options{Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Ensure took %s; binaries in %s", time.Since(start).Round(time.Millisecond), bins.Dir)
	for _, bin := range []string{bins.APIServer, bins.ControllerManager, bins.Scheduler} {
		out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", bin, err, out)
		}
		if got, want := strings.TrimSpace(string(out)), "Kubernetes "+KubernetesVersion; got != want {
			t.Errorf("%s --version = %q, want %q", filepath.Base(bin), got, want)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
