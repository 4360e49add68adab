package wireguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

const (
	// DefaultDeviceName is the device's name when Config.DeviceName is
	// empty.
	DefaultDeviceName = "isthmus0"
	// DefaultListenPort is the UDP port WireGuard listens on when
	// Config.ListenPort is zero. Peers are told to send there.
	DefaultListenPort = 51871
	// RouteProtocol marks the routes the device owns, in the routing
	// protocol field (`ip route show proto 73`). Routes through the device
	// with another protocol are left alone.
	RouteProtocol = netlink.RouteProtocol(73)
)

// ErrClosed is returned by methods of a closed Device.
var ErrClosed = errors.New("wireguard device is closed")

// Mode is a WireGuard implementation.
type Mode int

const (
	// ModeAuto uses the kernel's WireGuard where the kernel supports it,
	// the userspace implementation otherwise.
	ModeAuto Mode = iota
	// ModeKernel uses the kernel's WireGuard (a netlink link of type
	// wireguard) or fails.
	ModeKernel
	// ModeUserspace uses the embedded wireguard-go over a TUN device.
	ModeUserspace
)

func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeKernel:
		return "kernel"
	case ModeUserspace:
		return "userspace"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config configures a Device. The zero value of each field but StateDir
// has a useful meaning.
type Config struct {
	// StateDir is the directory that keeps the node's private key across
	// restarts, in KeyFileName (mode 0600); it is created, mode 0700, if
	// missing. Required: New fails when it is empty.
	StateDir string

	// DeviceName names the network device. Empty means DefaultDeviceName
	// ("isthmus0"). A userspace device's control socket is
	// /var/run/wireguard/<name>.sock, and that directory is shared by all
	// network namespaces of the machine: where several nodes run on one
	// machine (the local lab), give each node a distinct DeviceName. At
	// most 15 bytes.
	DeviceName string

	// ListenPort is the UDP port the device listens on, which peers send
	// to. Zero means DefaultListenPort (51871).
	ListenPort int

	// Mode picks the implementation. Zero (ModeAuto) means kernel
	// WireGuard where the kernel has it, userspace otherwise.
	Mode Mode

	// UnderlayMTU is the MTU of the network between nodes. The device's
	// MTU is this less the encapsulation overhead: 60 bytes to peers
	// reached over IPv4, 80 over IPv6, the lowest over all peers. Zero
	// means the MTU of the device holding the route to each peer (or to
	// the default route while there is no peer; 1500 without one). With
	// no peer yet the default route's family is assumed, or IPv6 when
	// there is no default route. At least 1280 when set.
	UnderlayMTU int

	// RouteTable is the routing table that gets the routes to peers'
	// AllowedIPs. Zero means the main table.
	RouteTable int

	// PersistentKeepalive is how often an idle tunnel sends a keepalive to
	// each peer. Zero means never: nodes reach each other directly, with
	// no NAT mapping to hold open.
	PersistentKeepalive time.Duration

	// UserspaceHelper, when set, runs a userspace device in a helper
	// process of its own (the command it returns, which calls
	// ServeUserspace) instead of in this process, so that the device,
	// its peers and routes, and the traffic through them outlive this
	// process as a kernel device does: an agent restart then leaves
	// cross-cluster traffic alone, and the next New adopts the helper's
	// device. The helper exits when the device is deleted (Delete). Nil
	// means the userspace device lives and dies with this process.
	UserspaceHelper HelperCommand `json:"-"`
}

func (c Config) withDefaults() (Config, error) {
	if c.StateDir == "" {
		return c, errors.New("config: StateDir is empty; give the directory where the agent keeps its state")
	}
	if c.DeviceName == "" {
		c.DeviceName = DefaultDeviceName
	}
	if len(c.DeviceName) >= unix.IFNAMSIZ {
		return c, fmt.Errorf("config: DeviceName %q is longer than %d bytes", c.DeviceName, unix.IFNAMSIZ-1)
	}
	if c.ListenPort == 0 {
		c.ListenPort = DefaultListenPort
	}
	if c.ListenPort < 0 || c.ListenPort > 65535 {
		return c, fmt.Errorf("config: ListenPort %d is not a UDP port (1-65535)", c.ListenPort)
	}
	if c.Mode < ModeAuto || c.Mode > ModeUserspace {
		return c, fmt.Errorf("config: unknown %v", c.Mode)
	}
	if c.UnderlayMTU != 0 && c.UnderlayMTU < minUnderlayMTU {
		return c, fmt.Errorf("config: UnderlayMTU %d is below %d", c.UnderlayMTU, minUnderlayMTU)
	}
	if c.RouteTable == 0 {
		c.RouteTable = unix.RT_TABLE_MAIN
	}
	if c.PersistentKeepalive < 0 {
		return c, fmt.Errorf("config: PersistentKeepalive %v is negative", c.PersistentKeepalive)
	}
	return c, nil
}

// Device is a node's WireGuard device with its peers and routes. It is
// safe for concurrent use; changes are applied one at a time.
type Device struct {
	logger  *slog.Logger
	cfg     Config
	key     wgtypes.Key
	mode    Mode
	backend backend

	mu     sync.Mutex // guards the fields below, and serializes changes to the device
	client *wgctrl.Client
	mtu    int
	names  map[wgtypes.Key]string // peer names from the last SetPeers, for Peers
	closed bool
}

// backend is the part that differs between kernel and userspace.
type backend interface {
	// close releases what this process holds; see Device.Close.
	close() error
	// delete removes the device from the system and releases it.
	delete() error
	// abort undoes the backend's construction when New fails: a device
	// New created goes, an adopted one stays.
	abort()
}

// New sets up the node's WireGuard device: it loads the node's key from
// cfg.StateDir (generating it the first time), creates the device, or
// adopts one of the same name left by an earlier run of the agent, and
// gives it the key and listen port. Peers and routes an adopted device
// already has stay until the first SetPeers reconciles them.
func New(logger *slog.Logger, cfg Config) (_ *Device, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	logger = logger.With(logfields.Device, cfg.DeviceName)

	kf, err := loadOrCreateKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	switch {
	case kf.created:
		logger.Info("Generated WireGuard key pair", "publicKey", kf.key.PublicKey().String(), "stateDir", cfg.StateDir)
	case kf.tightened:
		logger.Warn("WireGuard private key was readable by others; made it private", "file", KeyFileName, "stateDir", cfg.StateDir)
	}

	d := &Device{logger: logger, cfg: cfg, key: kf.key}
	d.backend, d.mode, err = openBackend(logger, cfg, tunnelMTU(d.underlayPaths(nil, 0)))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.backend.abort()
		}
	}()
	// After the device exists: wgctrl looks for the kernel's WireGuard
	// netlink family once, at creation, and creating the first kernel
	// device may be what loads the module.
	client, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	defer func() {
		if err != nil {
			client.Close()
		}
	}()
	d.client = client

	existing, err := client.Device(cfg.DeviceName)
	if err != nil {
		return nil, fmt.Errorf("read device %s: %w", cfg.DeviceName, err)
	}
	if existing.PrivateKey != (wgtypes.Key{}) && existing.PrivateKey != d.key {
		logger.Warn("Adopted device had another private key; replacing it with the node's, peers must learn the new public key",
			"previousPublicKey", existing.PublicKey.String())
	}
	port := cfg.ListenPort
	if err := client.ConfigureDevice(cfg.DeviceName, wgtypes.Config{PrivateKey: &d.key, ListenPort: &port}); err != nil {
		if udpPortInUse(port) {
			// wgctrl's userspace errors carry only an errno; say it plainly.
			return nil, fmt.Errorf("configure device %s: UDP port %d is in use in this network namespace (another WireGuard device?); set another ListenPort: %w", cfg.DeviceName, port, err)
		}
		return nil, fmt.Errorf("configure device %s: %w", cfg.DeviceName, err)
	}
	link, err := netlink.LinkByName(cfg.DeviceName)
	if err != nil {
		return nil, fmt.Errorf("find device %s: %w", cfg.DeviceName, err)
	}
	// An adopted device keeps the MTU for the peers it has, rather than
	// flapping to the no-peer value until the first SetPeers.
	var endpoints []netip.Addr
	for _, p := range currentPeers(existing) {
		if p.endpoint.IsValid() {
			endpoints = append(endpoints, p.endpoint.Addr())
		}
	}
	d.mtu = tunnelMTU(d.underlayPaths(endpoints, link.Attrs().Index))
	if link.Attrs().MTU != d.mtu {
		if err := netlink.LinkSetMTU(link, d.mtu); err != nil {
			return nil, fmt.Errorf("set MTU of %s to %d: %w", cfg.DeviceName, d.mtu, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set device %s up: %w", cfg.DeviceName, err)
	}
	if u, ok := d.backend.(*userspaceDevice); ok {
		// Bring it up now rather than on the TUN's up event, so that a
		// port already in use fails here.
		if err := u.up(); err != nil {
			return nil, fmt.Errorf("start device %s on UDP port %d: %w", cfg.DeviceName, port, err)
		}
	}
	logger.Info("WireGuard device ready", "mode", d.mode.String(), "listenPort", port, "mtu", d.mtu, "publicKey", d.PublicKey())
	return d, nil
}

// PublicKey is the node's WireGuard public key, base64-encoded: the value
// of the Node annotation meshconfig.NodeWireGuardPubKeyAnnotation.
func (d *Device) PublicKey() string { return d.key.PublicKey().String() }

// Name is the network device's name.
func (d *Device) Name() string { return d.cfg.DeviceName }

// Mode is the implementation in use: ModeKernel or ModeUserspace.
func (d *Device) Mode() Mode { return d.mode }

// ListenPort is the UDP port the device listens on.
func (d *Device) ListenPort() int { return d.cfg.ListenPort }

// MTU is the device's MTU, as last set from the underlay paths.
func (d *Device) MTU() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mtu
}

// Close releases what the device holds in this process. A kernel device,
// and a userspace device served by a helper process
// (Config.UserspaceHelper), stays in the system with its peers and
// routes, so pod traffic keeps flowing while the agent restarts and the
// next New adopts it; a userspace device served by this process cannot
// outlive it and is removed with its routes. Use Delete to remove the
// device in every case. Close is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	return errors.Join(d.backend.close(), d.client.Close())
}

// Delete removes the device, and with it its peers and routes, in either
// mode, and closes d: for when the node leaves the mesh. Deleting a
// closed Device returns ErrClosed.
func (d *Device) Delete() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.closed = true
	err := d.backend.delete()
	if err == nil {
		d.logger.Info("Deleted WireGuard device")
	}
	return errors.Join(err, d.client.Close())
}

// openBackend creates the device, or adopts a kernel one of that name.
func openBackend(logger *slog.Logger, cfg Config, mtu int) (backend, Mode, error) {
	name := cfg.DeviceName
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return nil, 0, fmt.Errorf("look up device %s: %w", name, err)
	case link.Type() == "wireguard":
		if cfg.Mode == ModeUserspace {
			return nil, 0, fmt.Errorf("device %s exists as kernel WireGuard but Mode is userspace: delete it (ip link del %s) or use ModeAuto", name, name)
		}
		logger.Info("Adopted existing kernel WireGuard device")
		return kernelDevice{name: name, adopted: true}, ModeKernel, nil
	case link.Type() == "tuntap":
		return adoptHelper(logger, cfg)
	default:
		return nil, 0, fmt.Errorf("device %s exists as a %s link, not WireGuard: remove it or choose another DeviceName", name, link.Type())
	}

	if cfg.Mode != ModeUserspace {
		err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}})
		if err == nil {
			logger.Info("Using kernel WireGuard")
			return kernelDevice{name: name}, ModeKernel, nil
		}
		if cfg.Mode == ModeKernel || !errors.Is(err, unix.EOPNOTSUPP) {
			return nil, 0, fmt.Errorf("create kernel WireGuard device %s: %w", name, err)
		}
		logger.Info("Kernel has no WireGuard; using the embedded userspace implementation", logfields.Error, err)
	}
	if cfg.UserspaceHelper != nil {
		h, err := startHelper(context.Background(), logger, cfg, mtu)
		if err != nil {
			return nil, 0, err
		}
		return h, ModeUserspace, nil
	}
	u, err := openUserspace(logger, name, mtu)
	if err != nil {
		return nil, 0, err
	}
	return u, ModeUserspace, nil
}

// kernelDevice is a kernel WireGuard link. It lives in the kernel, not in
// this process: closing it releases nothing.
type kernelDevice struct {
	name    string
	adopted bool // it existed before New
}

func (k kernelDevice) close() error { return nil }

func (k kernelDevice) abort() {
	if !k.adopted {
		_ = k.delete()
	}
}

func (k kernelDevice) delete() error {
	link, err := netlink.LinkByName(k.name)
	if err == nil {
		err = netlink.LinkDel(link)
	}
	var notFound netlink.LinkNotFoundError
	if err != nil && !errors.As(err, &notFound) {
		return fmt.Errorf("delete device %s: %w", k.name, err)
	}
	return nil
}

// udpPortInUse reports whether port cannot be bound in this namespace.
func udpPortInUse(port int) bool {
	for _, network := range []string{"udp4", "udp6"} {
		c, err := net.ListenPacket(network, fmt.Sprintf(":%d", port))
		if errors.Is(err, unix.EADDRINUSE) {
			return true
		}
		if err == nil {
			c.Close()
		}
	}
	return false
}
