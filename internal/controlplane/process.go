package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// process is one control-plane binary running as a child, its output in a
// log file.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has been reaped
	err     error         // exit status; read only after done is closed
}

// startProcess starts bin with args, its stdout and stderr appended to
// logPath. The child gets SIGKILL when this process dies (Pdeathsig), so a
// crashed test binary or lab never leaves a control plane behind.
func startProcess(name, bin string, args []string, logPath string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	defer logFile.Close() // the child holds its own descriptor
	fmt.Fprintf(logFile, "==== %s %s %q\n", time.Now().Format(time.RFC3339), bin, args)

	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pdeathsig fires when the OS thread that started the child exits,
	// not the process. A goroutine locked to its thread (network
	// namespace code does that) takes the thread with it when it ends, so
	// start from a fresh goroutine, which runs on an unlocked thread that
	// the Go runtime keeps for the life of the process.
	started := make(chan error, 1)
	go func() { started <- cmd.Start() }()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace (or until ctx ends), then SIGKILL,
// and waits for the process to be reaped. An exit caused by our signals is
// not an error.
func (p *process) stop(ctx context.Context, grace time.Duration) error {
	if p.exited() {
		return p.exitError()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	case <-ctx.Done():
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return nil
}

// exitError describes an exit that happened before stop was called.
func (p *process) exitError() error {
	<-p.done
	if p.err == nil {
		return fmt.Errorf("%s exited", p.name)
	}
	return fmt.Errorf("%s exited: %w", p.name, p.err)
}

// logTail returns the last lines of the process's log, for error messages.
func (p *process) logTail() string { return fileTail(p.logPath, 25) }

// fileTail returns the last n lines of the file at path (at most 16 KiB).
func fileTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	const max = 16 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(-max, io.SeekEnd)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(read log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// errAddrInUse tells a start that lost the race for its port apart from
// other failures, so it can retry with another port.
var errAddrInUse = errors.New("address already in use")
