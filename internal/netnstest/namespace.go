package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// runDir is where named network namespaces are bind-mounted, as by
// `ip netns add`, so that `ip netns exec <name>` reaches them too.
const runDir = "/run/netns"

// Namespace is a named network namespace created for one test and removed
// when the test ends. Its methods are safe for concurrent use.
type Namespace struct {
	name   string
	handle netns.NsHandle
}

// NewNamespace creates a network namespace named prefix plus a random
// suffix, with its loopback up, and removes it in tb.Cleanup.
func NewNamespace(tb testing.TB, prefix string) *Namespace {
	tb.Helper()
	name := prefix + "-" + randomSuffix()
	var handle netns.NsHandle
	err := onLockedThread(func() error {
		h, err := netns.NewNamed(name)
		if err != nil {
			// NewNamed may leave an empty mount point behind.
			_ = os.Remove(filepath.Join(runDir, name))
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		handle = h
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	ns := &Namespace{name: name, handle: handle}
	tb.Cleanup(func() {
		handle.Close()
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("delete netns %s: %v", name, err)
		}
	})
	h := ns.Netlink(tb)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("netns %s: set lo up: %v", name, err)
	}
	return ns
}

// Name is the namespace's name under /run/netns (`ip netns exec <name>`).
func (ns *Namespace) Name() string { return ns.name }

// Path is the namespace's bind mount, for nsenter --net=<path>.
func (ns *Namespace) Path() string { return filepath.Join(runDir, ns.name) }

// Handle is an open handle to the namespace, valid until the test ends.
func (ns *Namespace) Handle() netns.NsHandle { return ns.handle }

// Netlink returns a netlink handle that works in the namespace from any
// thread. It is closed when the test ends. A handle is not safe for
// concurrent use: take one per goroutine.
func (ns *Namespace) Netlink(tb testing.TB) *netlink.Handle {
	tb.Helper()
	h, err := netlink.NewHandleAt(ns.handle)
	if err != nil {
		tb.Fatalf("netlink handle in netns %s: %v", ns.name, err)
	}
	tb.Cleanup(h.Close)
	return h
}

// Do runs f on an OS thread that is inside the namespace for the duration
// of f. Sockets and processes f creates belong to the namespace; goroutines
// f starts do not run in it. f must not change namespaces itself.
func (ns *Namespace) Do(f func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(ns.handle); err != nil {
			return fmt.Errorf("enter netns %s: %w", ns.name, err)
		}
		return f()
	})
}

// Start starts cmd inside the namespace: the child is born in it.
func (ns *Namespace) Start(cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}

// Run runs a command inside the namespace and returns its combined output.
// A failure's error names the command and the namespace and holds the
// output.
func (ns *Namespace) Run(ctx context.Context, name string, args ...string) (string, error) {
	var out strings.Builder
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := ns.Start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return out.String(), fmt.Errorf("netns %s: %s %s: %w\n%s", ns.name, name, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// Sysctl sets a sysctl of the namespace, named as by sysctl(8)
// ("net.ipv4.ip_forward").
func (ns *Namespace) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return ns.Do(func() error {
		// /proc/sys/net resolves to the namespace of the opening thread.
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns %s: sysctl %s=%s: %w", ns.name, key, value, err)
		}
		return nil
	})
}

// Listen opens a listener inside the namespace (see net.Listen).
func (ns *Namespace) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// Dial connects from inside the namespace (see net.Dialer.DialContext).
// The address must be a literal IP and port: name resolution and
// dual-stack racing would run on other threads.
func (ns *Namespace) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// onLockedThread runs f on a goroutine locked to its OS thread and puts the
// thread back into its original network namespace afterwards. When that
// fails the thread stays locked, so the runtime retires it with the
// goroutine instead of reusing it in the wrong namespace.
func onLockedThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer origin.Close()
		ferr := f()
		if err := netns.Set(origin); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// randomSuffix makes names unique across test binaries running at once.
func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Require gates a test that builds namespaces: it skips in the unit tier
// (go test -short), then requires root (privileged.Require).
func Require(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("integration test (real network namespaces); runs without -short")
	}
	privileged.Require(tb)
}
