package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// ProcessSpec is one process the supervisor runs and keeps running: a lab
// kubelet, an isthmus-agent, an isthmus-apiserver.
type ProcessSpec struct {
	// Name is unique in the lab, e.g. "kubelet/isthmus-c1-n1".
	Name string
	Path string
	Args []string
	// Env is added to the supervisor's environment.
	Env []string
	// Netns is the named network namespace the process runs in; empty
	// means the supervisor's.
	Netns string
	// Cgroup is the cgroup (relative to the hierarchy) the process starts
	// in; empty means the supervisor's.
	Cgroup string
	// LogFile receives the process's stdout and stderr (appended).
	LogFile string
	// ReadyFD says the process writes one byte to file descriptor 3 once
	// it is ready; otherwise it counts as ready once started.
	ReadyFD bool
	// Ready, if set, is polled until it returns nil to decide readiness
	// (after the ReadyFD byte, when both are set).
	Ready func(ctx context.Context) error
	// ReadyTimeout bounds each start's wait for readiness. Zero means two
	// minutes.
	ReadyTimeout time.Duration
	// StopGrace is how long a stop waits after SIGTERM before SIGKILL.
	// Zero means ten seconds.
	StopGrace time.Duration
}

// ProcessStatus is what the control API reports about a process.
type ProcessStatus = state.ProcessStatus

// Process states.
const (
	StateRunning    = "running"
	StateRestarting = "restarting"
	StateStopped    = "stopped"
)

// process runs one ProcessSpec: started once with Start, it is restarted
// with backoff whenever it exits, until Stop. Safe for concurrent use.
type process struct {
	spec ProcessSpec
	hier cgroup.Hierarchy
	log  *slog.Logger

	restartc chan chan error // manual restarts, answered once ready
	cancel   context.CancelFunc
	done     chan struct{} // closed when the supervising goroutine returns

	mu     sync.Mutex // guards the fields below
	status ProcessStatus
	cur    *running
}

// running is one incarnation of a process.
type running struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed after cmd.Wait
	err    error         // set before exited closes
}

func newProcess(spec ProcessSpec, hier cgroup.Hierarchy, logger *slog.Logger) *process {
	if spec.ReadyTimeout == 0 {
		spec.ReadyTimeout = 2 * time.Minute
	}
	if spec.StopGrace == 0 {
		spec.StopGrace = 10 * time.Second
	}
	return &process{
		spec:     spec,
		hier:     hier,
		log:      logger.With(logfields.Component, spec.Name),
		restartc: make(chan chan error),
		status:   ProcessStatus{Name: spec.Name, State: StateStopped, LogFile: spec.LogFile},
	}
}

// Start starts the process, waits until it is ready and then supervises it
// until Stop. When the first start fails, nothing keeps running.
func (p *process) Start(ctx context.Context) error {
	r, err := p.startOnce(ctx)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancel
	p.done = make(chan struct{})
	go p.supervise(sctx, r)
	return nil
}

func (p *process) supervise(ctx context.Context, r *running) {
	defer close(p.done)
	backoff := time.Second
	for {
		var answer chan error
		select {
		case <-ctx.Done():
			p.terminate(r)
			p.setStatus(func(s *ProcessStatus) { s.State, s.PID, s.Since = StateStopped, 0, time.Now() })
			return
		case answer = <-p.restartc:
			p.terminate(r)
			backoff = time.Second
		case <-r.exited:
			p.log.Warn("process exited; restarting", logfields.Error, r.err, "backoff", backoff)
			p.setStatus(func(s *ProcessStatus) { s.State, s.LastExit, s.Since = StateRestarting, exitText(r.err), time.Now() })
			select {
			case <-ctx.Done():
				continue
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
		var err error
		for {
			var next *running
			if next, err = p.startOnce(ctx); err == nil {
				r = next
				break
			}
			if ctx.Err() != nil {
				break
			}
			p.log.Warn("restart failed; retrying", logfields.Error, err, "backoff", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
		if answer != nil {
			answer <- err
		}
		if err != nil { // only when stopping
			p.setStatus(func(s *ProcessStatus) { s.State, s.PID = StateStopped, 0 })
			return
		}
		p.setStatus(func(s *ProcessStatus) { s.Restarts++ })
	}
}

// Restart stops the process and starts it again, and returns once it is
// ready again.
func (p *process) Restart(ctx context.Context) error {
	answer := make(chan error, 1)
	select {
	case p.restartc <- answer:
	case <-p.done:
		return fmt.Errorf("%s is stopped", p.spec.Name)
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-answer:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop stops supervising and ends the process (SIGTERM, then SIGKILL after
// StopGrace), and waits for it.
func (p *process) Stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	<-p.done
}

func (p *process) Status() ProcessStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

func (p *process) setStatus(f func(*ProcessStatus)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(&p.status)
}

// startOnce starts one incarnation and waits until it is ready.
func (p *process) startOnce(ctx context.Context) (*running, error) {
	logf, err := os.OpenFile(p.spec.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log: %w", p.spec.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command(p.spec.Path, p.spec.Args...)
	cmd.Env = append(os.Environ(), p.spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The lab's processes die with the supervisor; `lab down` or a new `up`
	// cleans up after a supervisor that died.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var readyR, readyW *os.File
	if p.spec.ReadyFD {
		if readyR, readyW, err = os.Pipe(); err != nil {
			return nil, fmt.Errorf("start %s: %w", p.spec.Name, err)
		}
		defer readyR.Close()
		cmd.ExtraFiles = []*os.File{readyW}
	}
	where := nsexec.Where{}
	if p.spec.Netns != "" {
		where.Netns = nsexec.Path(p.spec.Netns)
	}
	if p.spec.Cgroup != "" {
		dir, err := p.hier.Open(p.spec.Cgroup)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", p.spec.Name, err)
		}
		defer dir.Close()
		where.Cgroup = dir
	}
	err = nsexec.Start(cmd, where)
	if readyW != nil {
		readyW.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", p.spec.Name, err)
	}
	r := &running{cmd: cmd, exited: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.exited)
	}()
	if err := p.waitReady(ctx, r, readyR); err != nil {
		p.terminate(r)
		return nil, fmt.Errorf("start %s: %w%s", p.spec.Name, err, logTail(p.spec.LogFile))
	}
	p.setStatus(func(s *ProcessStatus) { s.State, s.PID, s.Since = StateRunning, cmd.Process.Pid, time.Now() })
	p.log.Info("process ready", "pid", cmd.Process.Pid)
	return r, nil
}

func (p *process) waitReady(ctx context.Context, r *running, readyR *os.File) error {
	ctx, cancel := context.WithTimeout(ctx, p.spec.ReadyTimeout)
	defer cancel()
	if readyR != nil {
		readyc := make(chan error, 1)
		go func() {
			var b [1]byte
			_, err := readyR.Read(b[:])
			readyc <- err
		}()
		select {
		case err := <-readyc:
			if err != nil {
				<-r.exited
				return fmt.Errorf("exited before it was ready: %s", exitText(r.err))
			}
		case <-r.exited:
			return fmt.Errorf("exited before it was ready: %s", exitText(r.err))
		case <-ctx.Done():
			return fmt.Errorf("not ready within %s: %w", p.spec.ReadyTimeout, context.Cause(ctx))
		}
	}
	if p.spec.Ready == nil {
		return nil
	}
	var last error
	for {
		if last = p.spec.Ready(ctx); last == nil {
			return nil
		}
		select {
		case <-r.exited:
			return fmt.Errorf("exited before it was ready: %s", exitText(r.err))
		case <-ctx.Done():
			return fmt.Errorf("not ready within %s: %w", p.spec.ReadyTimeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// terminate sends SIGTERM, then SIGKILL after StopGrace, and waits.
func (p *process) terminate(r *running) {
	select {
	case <-r.exited:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(p.spec.StopGrace):
		p.log.Warn("process ignored SIGTERM; killing it")
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// logTail returns the last lines of a log file, to put in an error.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "\nlast lines of " + path + ":\n  " + strings.ReplaceAll(string(bytes.Join(lines, []byte("\n"))), "\n", "\n  ")
}
