package agenttest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/agent/agentcmd"
)

// EnvReexec marks a test binary re-executed to run isthmus-agent.
const EnvReexec = "ISTHMUS_AGENT_TEST_REEXEC"

// RunAgentIfReexec runs isthmus-agent and exits when the test binary was
// re-executed by StartProcess. Call it first in TestMain.
func RunAgentIfReexec() {
	if os.Getenv(EnvReexec) == "1" {
		os.Exit(agentcmd.Main())
	}
}

// Process is a real isthmus-agent process: the test binary re-executed,
// whose TestMain runs the agent's command line with the given arguments.
type Process struct {
	tb      testing.TB
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}

	mu  sync.Mutex // guards err
	err error
}

// StartProcess starts isthmus-agent with args, by re-executing the test
// binary. It is killed at cleanup if still running; its log is printed when
// the test failed.
func StartProcess(tb testing.TB, args ...string) *Process {
	tb.Helper()
	return startCommand(tb, os.Args[0], args, EnvReexec+"=1")
}

// BuildAgent builds cmd/isthmus-agent (through the Go build cache) and
// returns the binary's path, for measurements that must not carry a test
// binary's extra code, such as RSS.
func BuildAgent(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "isthmus-agent")
	out, err := exec.Command("go", "build", "-o", path, "github.com/isthmus-mesh/isthmus/cmd/isthmus-agent").CombinedOutput()
	if err != nil {
		tb.Fatalf("build isthmus-agent: %v\n%s", err, out)
	}
	return path
}

// StartBinary starts the isthmus-agent binary at path with args; see
// StartProcess.
func StartBinary(tb testing.TB, path string, args ...string) *Process {
	tb.Helper()
	return startCommand(tb, path, args)
}

func startCommand(tb testing.TB, path string, args []string, env ...string) *Process {
	logPath := filepath.Join(tb.TempDir(), "agent.log")
	log, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		tb.Fatalf("start agent process: %v", err)
	}
	p := &Process{tb: tb, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		log.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Kill()
		if tb.Failed() {
			b, _ := os.ReadFile(logPath)
			tb.Logf("agent (pid %d) log:\n%s", cmd.Process.Pid, b)
		}
	})
	return p
}

// Pid returns the process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited returns a channel closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Kill kills the process with SIGKILL, as a crash would, and waits for it.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop asks the process to stop (SIGTERM) and waits up to a minute.
func (p *Process) Stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		p.Kill()
		return fmt.Errorf("agent did not stop within a minute of SIGTERM")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Log returns what the process logged so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// PeakRSS returns the process's peak resident set size so far (VmHWM).
func (p *Process) PeakRSS() (int64, error) {
	return procStatusBytes(p.Pid(), "VmHWM:")
}

// RSS returns the process's current resident set size (VmRSS).
func (p *Process) RSS() (int64, error) {
	return procStatusBytes(p.Pid(), "VmRSS:")
}

func procStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, field) {
			continue
		}
		fs := strings.Fields(strings.TrimPrefix(line, field))
		if len(fs) != 2 || fs[1] != "kB" {
			return 0, fmt.Errorf("unexpected %s line %q", field, line)
		}
		kb, err := strconv.ParseInt(fs[0], 10, 64)
		return kb * 1024, err
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", field, pid)
}
