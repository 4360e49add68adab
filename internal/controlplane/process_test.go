package controlplane

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// envHelper makes the test binary act as a parent that starts a child and
// waits to be killed.
const envHelper = "ISTHMUS_CONTROLPLANE_TEST_PARENT"

func TestMain(m *testing.M) {
	if mode := os.Getenv(envHelper); mode != "" {
		os.Exit(runParentHelper(mode))
	}
	os.Exit(m.Run())
}

// runParentHelper starts `sleep` through startProcess, from a goroutine
// locked to its OS thread that then exits when mode is "locked-thread",
// prints the child's pid and blocks.
func runParentHelper(mode string) int {
	logPath := filepath.Join(os.TempDir(), fmt.Sprintf("isthmus-cp-helper-%d.log", os.Getpid()))
	defer os.Remove(logPath)
	result := make(chan *process, 1)
	tid := make(chan int, 1)
	var start func()
	start = func() {
		if mode == "locked-thread" {
			// Never unlocked: the thread exits with this goroutine,
			// unless it is the main thread, which the runtime keeps;
			// then try from another goroutine.
			runtime.LockOSThread()
			if syscall.Gettid() == os.Getpid() {
				runtime.UnlockOSThread()
				go start()
				return
			}
		}
		tid <- syscall.Gettid()
		p, err := startProcess("sleep", "/bin/sleep", []string{"1000"}, logPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			result <- nil
			return
		}
		result <- p
	}
	go start()
	p := <-result
	if p == nil {
		return 1
	}
	if mode == "locked-thread" {
		// Report only once the locked thread is gone.
		task := fmt.Sprintf("/proc/self/task/%d", <-tid)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := wait.PollUntilContextCancel(ctx, 10*time.Millisecond, true, func(context.Context) (bool, error) {
			_, err := os.Stat(task)
			return os.IsNotExist(err), nil
		}); err != nil {
			fmt.Fprintln(os.Stderr, "locked thread did not exit")
			return 1
		}
	}
	fmt.Println(p.cmd.Process.Pid)
	select {} // until killed
}

// TestChildDiesWithParent: a child outlives neither a SIGKILLed parent nor
// the exit of the (locked) thread that started it does it kill the child
// early.
func TestChildDiesWithParent(t *testing.T) {
	for _, mode := range []string{"plain", "locked-thread"} {
		t.Run(mode, func(t *testing.T) {
			helper := exec.Command(os.Args[0], "-test.run=^$")
			helper.Env = append(os.Environ(), envHelper+"="+mode)
			out, err := helper.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			helper.Stderr = os.Stderr
			if err := helper.Start(); err != nil {
				t.Fatal(err)
			}
			defer helper.Wait()
			defer helper.Process.Kill()
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				t.Fatalf("read child pid: %v", err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(line))
			if err != nil {
				t.Fatal(err)
			}
			// The starting thread is gone by now in locked-thread mode;
			// the child must still run.
			if !alive(pid) {
				t.Fatalf("child %d died while its parent lives", pid)
			}
			if err := helper.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(context.Context) (bool, error) {
				return !alive(pid), nil
			})
			if err != nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("child %d still alive after its parent was killed", pid)
			}
		})
	}
}

// alive reports whether pid runs (a zombie awaiting its reaper is dead).
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}
