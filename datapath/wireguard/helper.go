package wireguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// helperReadyTimeout bounds the wait for a helper process to serve its
// device.
const helperReadyTimeout = 15 * time.Second

// HelperCommand returns the command of a helper process that serves the
// userspace device called device, created with MTU mtu, by calling
// ServeUserspace. See Config.UserspaceHelper.
type HelperCommand func(device string, mtu int) *exec.Cmd

// ServeUserspace runs the userspace WireGuard device called name (a TUN
// device in this process's network namespace, with MTU mtu, and its UAPI
// socket) until ctx ends, which removes the device, or until the device
// goes away: deleted (Device.Delete in the agent, `ip link del`) or its
// UAPI socket removed, after which it can no longer be configured. It is
// the body of the helper process Config.UserspaceHelper starts; it serves
// an unconfigured device, which the agent configures through wgctrl.
func ServeUserspace(ctx context.Context, logger *slog.Logger, name string, mtu int) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("device name %q: want 1 to %d bytes", name, unix.IFNAMSIZ-1)
	}
	if mtu == 0 {
		mtu = tunnelMTU(nil)
	}
	logger = logger.With(logfields.Device, name)
	u, err := openUserspace(logger, name, mtu)
	if err != nil {
		return err
	}
	// Up now, so that the agent's first configuration binds the listen
	// port and reports a port in use as an error rather than in our log.
	if err := u.up(); err != nil {
		u.abort()
		return fmt.Errorf("start device %s: %w", name, err)
	}
	logger.Info("Serving userspace WireGuard device", "pid", os.Getpid(), "mtu", mtu)
	select {
	case <-ctx.Done():
		logger.Info("Stopping; the device goes with this process")
	case <-u.dev.Wait():
		logger.Info("Device was removed; exiting")
	case <-u.served:
		logger.Warn("UAPI socket went away; removing the device, which can no longer be configured")
	}
	return u.close()
}

// helperDevice is a userspace device served by a helper process (see
// ServeUserspace): it outlives this process, like a kernel device.
type helperDevice struct {
	name    string
	spawned bool // this New started the helper
}

func (h helperDevice) close() error { return nil }

// delete removes the TUN device; its helper notices and exits, removing
// its UAPI socket.
func (h helperDevice) delete() error {
	if err := (kernelDevice{name: h.name}).delete(); err != nil {
		return err
	}
	// Should the helper be gone already (killed), its socket is left.
	return removeStaleSocket(h.name)
}

func (h helperDevice) abort() {
	if h.spawned {
		_ = h.delete()
	}
}

// socketPath is the UAPI socket of device name.
func socketPath(name string) string { return filepath.Join(uapiSocketDir, name+".sock") }

// socketServed reports whether something accepts connections on device
// name's UAPI socket.
func socketServed(name string) bool {
	c, err := net.DialTimeout("unix", socketPath(name), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// removeStaleSocket removes device name's UAPI socket unless it is
// served.
func removeStaleSocket(name string) error {
	if socketServed(name) {
		return nil
	}
	if err := os.Remove(socketPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale UAPI socket: %w", err)
	}
	return nil
}

// adoptHelper takes over a userspace device (a TUN link) some earlier
// helper process serves.
func adoptHelper(logger *slog.Logger, cfg Config) (backend, Mode, error) {
	name := cfg.DeviceName
	if cfg.UserspaceHelper == nil {
		return nil, 0, fmt.Errorf("device %s exists as a TUN device, likely another process's userspace WireGuard: stop that process or choose another DeviceName", name)
	}
	if cfg.Mode == ModeKernel {
		return nil, 0, fmt.Errorf("device %s exists as a userspace (TUN) device but Mode is kernel: delete it (ip link del %s) or use ModeAuto", name, name)
	}
	if !socketServed(name) {
		return nil, 0, fmt.Errorf("device %s exists as a TUN device but nothing serves its UAPI socket %s: delete it (ip link del %s) and retry", name, socketPath(name), name)
	}
	logger.Info("Adopted userspace WireGuard device served by a helper process")
	return helperDevice{name: name}, ModeUserspace, nil
}

// startHelper starts a helper process for the device and waits until it
// serves it. The helper runs in a session of its own, so that signals for
// this process's group (a terminal's Ctrl-C, a supervisor's SIGTERM to
// the group) leave it alone.
func startHelper(ctx context.Context, logger *slog.Logger, cfg Config, mtu int) (backend, error) {
	name := cfg.DeviceName
	cmd := cfg.UserspaceHelper(name, mtu)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	cmd.SysProcAttr.Pdeathsig = 0
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start userspace WireGuard helper for %s: %w", name, err)
	}
	exited := make(chan error, 1)
	// Reap it should it exit while this process lives; otherwise it is
	// reparented when this process exits.
	go func() { exited <- cmd.Wait() }()
	h := helperDevice{name: name, spawned: true}
	ctx, cancel := context.WithTimeout(ctx, helperReadyTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		link, err := netlink.LinkByName(name)
		if err == nil && link.Type() == "tuntap" && socketServed(name) {
			logger.Info("Started userspace WireGuard helper process", "pid", cmd.Process.Pid)
			return h, nil
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("userspace WireGuard helper for %s exited before it served the device: %v", name, err)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("userspace WireGuard helper for %s did not serve the device within %s", name, helperReadyTimeout)
		case <-tick.C:
		}
	}
}
