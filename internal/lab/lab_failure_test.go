package lab_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/labtest"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// TestFailedUpRollsBack breaks the lab kubelet and checks that up fails,
// says why, and leaves nothing of what it started.
func TestFailedUpRollsBack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts control planes; skipped with -short")
	}
	privileged.Require(t)
	bins := labtest.Build(t)
	// An isthmus whose kubelet dies at once; everything else is real.
	broken := filepath.Join(t.TempDir(), "isthmus")
	script := "#!/bin/sh\nif [ \"$2\" = kubelet ]; then echo 'kubelet: broken on purpose' >&2; exit 3; fi\nexec " + bins.Isthmus + " \"$@\"\n"
	if err := os.WriteFile(broken, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	name := labtest.Name()
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t.Cleanup(func() { _ = lab.Down(context.Background(), root, name) })

	cfg := lab.Config{StateRoot: root, Isthmus: broken, Progress: testLog{t}}
	cfg.Name, cfg.Clusters, cfg.NodesPerCluster = name, 1, 1
	l, err := lab.Up(ctx, cfg)
	if err == nil {
		l.Down(ctx)
		t.Fatal("up succeeded with a broken kubelet")
	}
	for _, want := range []string{"kubelet/" + name + "-c1-n1", "broken on purpose"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	left, lerr := lab.Leftovers(root, name)
	if lerr != nil || len(left) != 0 {
		t.Errorf("after the failed up: %v %v", left, lerr)
	}
}

// TestUpAfterCrash kills a lab's every process, as a crash or reboot of the
// supervisor would, and checks that status reports the remains, up removes
// them and starts afresh, and a running lab is not started twice.
func TestUpAfterCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts control planes; skipped with -short")
	}
	privileged.Require(t)
	bins := labtest.Build(t)
	name := labtest.Name()
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t.Cleanup(func() { _ = lab.Down(context.Background(), root, name) })
	cfg := lab.Config{StateRoot: root, Isthmus: bins.Isthmus, Progress: testLog{t}}
	cfg.Name, cfg.Clusters, cfg.NodesPerCluster = name, 1, 1

	if _, err := lab.Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Up(ctx, cfg); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second up of a running lab: %v", err)
	}
	// The crash: SIGKILL for everything, so nothing cleans up.
	hier, err := cgroup.Find()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := state.For(root, name).Holder()
	if err != nil || pid == 0 {
		t.Fatalf("supervisor pid %d, %v", pid, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := hier.Kill(ctx, topology.CgroupDir(name)); err != nil {
		t.Fatal(err)
	}
	waitUnlocked(t, state.For(root, name))
	if _, err := lab.Open(root, name); err == nil {
		t.Fatal("Open found a lab whose supervisor is dead")
	}
	left, err := lab.Leftovers(root, name)
	if err != nil || len(left) < 3 {
		t.Fatalf("remains of the crashed lab: %v, %v", left, err)
	}

	var progress strings.Builder
	cfg.Progress = &progress
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("up after the crash: %v\n%s", err, progress.String())
	}
	if !strings.Contains(progress.String(), "removing the remains") {
		t.Errorf("up did not say it removed the remains:\n%s", progress.String())
	}
	if _, err := l.Client(l.Contexts()[0]); err != nil {
		t.Error(err)
	}
	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := lab.Leftovers(root, name); len(left) != 0 {
		t.Errorf("after down: %v", left)
	}
}

// waitUnlocked waits until the crashed lab's lock is free. kill and
// cgroup.kill return before the kernel has finished tearing every thread
// down, and the lock lives until the last process sharing it is gone.
func waitUnlocked(t *testing.T, dir state.Dir) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		pid, err := dir.Holder()
		if err != nil {
			t.Fatal(err)
		}
		if pid == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lab lock is still held 30s after every lab process was killed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Logf("lab: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
