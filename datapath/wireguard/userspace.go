package wireguard

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// uapiSocketDir is where wireguard-go, wg(8) and wgctrl meet: one socket
// per device name, for the whole machine.
const uapiSocketDir = "/var/run/wireguard"

// userspaceDevice is wireguard-go running in this process over a TUN
// device, serving wgctrl and wg(8) on its UAPI socket. The TUN device and
// its routes disappear when it closes.
type userspaceDevice struct {
	logger  *slog.Logger
	dev     *device.Device
	uapi    net.Listener
	served  chan struct{} // closed when the UAPI accept loop has ended
	closing atomic.Bool
}

func openUserspace(logger *slog.Logger, name string, mtu int) (_ *userspaceDevice, err error) {
	socket := filepath.Join(uapiSocketDir, name+".sock")
	// The socket first: it is the machine-wide name, so a clash with
	// another node's device fails here, before a TUN device exists.
	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		return nil, fmt.Errorf("open UAPI socket %s (shared by all network namespaces; is another node on this machine using device name %s?): %w", socket, name, err)
	}
	defer uapiFile.Close() // the listener below holds its own copy
	defer func() {
		if err != nil {
			os.Remove(socket)
		}
	}()
	tdev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create TUN device %s: %w", name, err)
	}
	wglog := logger.With(logfields.Component, "wireguard-go")
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), &device.Logger{
		Verbosef: func(format string, args ...any) {
			if wglog.Enabled(context.Background(), slog.LevelDebug) {
				wglog.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			wglog.Error(fmt.Sprintf(format, args...))
		},
	})
	uapi, err := ipc.UAPIListen(name, uapiFile)
	if err != nil {
		dev.Close() // closes the TUN device too
		return nil, fmt.Errorf("listen on UAPI socket %s: %w", socket, err)
	}
	u := &userspaceDevice{logger: logger, dev: dev, uapi: uapi, served: make(chan struct{})}
	go u.serve()
	return u, nil
}

// serve answers wgctrl and wg(8) until the listener closes.
func (u *userspaceDevice) serve() {
	defer close(u.served)
	for {
		c, err := u.uapi.Accept()
		if err != nil {
			if !u.closing.Load() {
				// The socket file was removed or the listener failed:
				// the device can no longer be configured.
				u.logger.Error("UAPI socket stopped; device can no longer be configured", logfields.Error, err)
			}
			return
		}
		go u.dev.IpcHandle(c)
	}
}

func (u *userspaceDevice) up() error { return u.dev.Up() }

func (u *userspaceDevice) close() error {
	u.closing.Store(true)
	err := u.uapi.Close()
	<-u.served
	u.dev.Close()
	return err
}

func (u *userspaceDevice) delete() error { return u.close() }

func (u *userspaceDevice) abort() { _ = u.close() }
