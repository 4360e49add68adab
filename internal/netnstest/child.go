package netnstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv names the helper a child of StartChild runs instead of tests.
const helperEnv = "NETNSTEST_HELPER"

// rpcService is the name ServeRPC registers the helper's receiver under.
const rpcService = "Helper"

// stopGrace is how long Stop waits for a child to exit by itself.
const stopGrace = 15 * time.Second

// Helper is the body of a child process started by StartChild. conn is
// its line to the parent: the parent's Child.Call arrives there (serve it
// with ServeRPC), and it reaches end of file when the parent stops the
// child. A helper releases what it holds before returning; its process
// then exits, with status 1 if it returned an error.
type Helper func(conn io.ReadWriteCloser) error

// Main runs the package's tests or, in a process started by StartChild,
// the helper it names, and exits. Call it from TestMain:
//
//	func TestMain(m *testing.M) {
//		netnstest.Main(m, map[string]netnstest.Helper{"node": runNode})
//	}
func Main(m *testing.M, helpers map[string]Helper) {
	name, ok := os.LookupEnv(helperEnv)
	if !ok {
		os.Exit(m.Run())
	}
	os.Exit(runHelper(name, helpers))
}

func runHelper(name string, helpers map[string]Helper) int {
	h, ok := helpers[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "netnstest: this test binary has no helper %q\n", name)
		return 2
	}
	// Calls come on stdin and replies go on stdout. Keep stdout for them
	// alone: whatever else the process writes there goes to stderr.
	out, err := unix.FcntlInt(1, unix.F_DUPFD_CLOEXEC, 3)
	if err == nil {
		err = unix.Dup3(2, 1, 0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "netnstest: helper %s: redirect stdout: %v\n", name, err)
		return 1
	}
	conn := &pipeConn{r: os.Stdin, w: os.NewFile(uintptr(out), "parent")}
	if err := h(conn); err != nil {
		fmt.Fprintf(os.Stderr, "netnstest: helper %s: %v\n", name, err)
		return 1
	}
	return 0
}

// ServeRPC serves rcvr's exported methods on conn until it closes. The
// methods follow net/rpc's form, func (t *T) Method(args A, reply *R)
// error, with JSON-encodable A and R; the parent calls them with
// Child.Call(ctx, "Method", args, &reply). Calls may arrive concurrently.
func ServeRPC(conn io.ReadWriteCloser, rcvr any) error {
	s := rpc.NewServer()
	if err := s.RegisterName(rpcService, rcvr); err != nil {
		return fmt.Errorf("register RPC receiver: %w", err)
	}
	s.ServeCodec(jsonrpc.NewServerCodec(conn))
	return nil
}

// Child is a child process of the test binary, born in a namespace, that
// runs a Helper. Its methods are safe for concurrent use.
type Child struct {
	name   string
	cmd    *exec.Cmd
	client *rpc.Client
	stderr *logWriter

	exited  chan struct{}
	waitErr error // set before exited is closed

	stopOnce sync.Once
	stopErr  error
}

// StartChild starts the test binary again inside ns, running the helper
// Main knows as helper; env adds "KEY=value" variables to its environment.
// The child's stderr goes to the test log, and it is stopped when the
// test ends (see Stop) and killed if the test process dies.
func StartChild(tb testing.TB, ns *Namespace, helper string, env ...string) *Child {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("start child %s: %v", helper, err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		tb.Fatalf("start child %s: %v", helper, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		tb.Fatalf("start child %s: %v", helper, err)
	}
	name := helper + "@" + ns.Name()
	c := &Child{name: name, stderr: &logWriter{tb: tb, prefix: name}, exited: make(chan struct{})}
	c.cmd = exec.Command(exe)
	c.cmd.Env = append(append(os.Environ(), helperEnv+"="+helper), env...)
	c.cmd.Stdin, c.cmd.Stdout, c.cmd.Stderr = inR, outW, c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = ns.Start(c.cmd)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		tb.Fatalf("start child %s: %v", name, err)
	}
	c.client = jsonrpc.NewClient(&pipeConn{r: outR, w: inW})
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.exited)
	}()
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Errorf("stop child: %v", err)
		}
	})
	return c
}

// Pid is the child's process ID.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Call calls the helper's method (see ServeRPC) and waits for its reply,
// for ctx to end, or for the child to exit.
func (c *Child) Call(ctx context.Context, method string, args, reply any) error {
	call := c.client.Go(rpcService+"."+method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		if call.Error != nil {
			return fmt.Errorf("child %s: %s: %w", c.name, method, call.Error)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("child %s: %s: %w", c.name, method, ctx.Err())
	case <-c.exited:
		return fmt.Errorf("child %s exited during %s: %v", c.name, method, c.waitErr)
	}
}

// Stop closes the child's connection, which tells its helper to release
// what it holds and exit, and waits for it to exit, killing it if it has
// not within 15s. It returns an error if the child failed or was killed.
// Stopping a stopped child returns the first result again.
func (c *Child) Stop() error {
	c.stopOnce.Do(func() {
		c.client.Close()
		select {
		case <-c.exited:
			if c.waitErr != nil {
				c.stopErr = fmt.Errorf("child %s: %w", c.name, c.waitErr)
			}
		case <-time.After(stopGrace):
			_ = c.cmd.Process.Kill()
			<-c.exited
			c.stopErr = fmt.Errorf("child %s did not exit within %s of its stop; killed", c.name, stopGrace)
		}
		c.stderr.flush()
	})
	return c.stopErr
}

// Kill kills the child at once, as a crash would, and waits for it to
// exit. Its helper releases nothing.
func (c *Child) Kill() {
	c.stopOnce.Do(func() {
		_ = c.cmd.Process.Kill()
		<-c.exited
		c.client.Close()
		c.stderr.flush()
	})
}

// pipeConn joins the two pipes to a child into one connection.
type pipeConn struct {
	r io.ReadCloser
	w io.WriteCloser
}

func (p *pipeConn) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *pipeConn) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p *pipeConn) Close() error                { return errors.Join(p.w.Close(), p.r.Close()) }

// logWriter writes a child's stderr to the test log, line by line.
type logWriter struct {
	tb     testing.TB
	prefix string

	mu   sync.Mutex // guards buf
	buf  []byte
	done bool
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return len(b), nil
	}
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.tb.Logf("[%s] %s", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

// flush logs a last unterminated line; later writes are dropped, because
// the test may be over.
func (w *logWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.tb.Logf("[%s] %s", w.prefix, w.buf)
	}
	w.buf, w.done = nil, true
}
