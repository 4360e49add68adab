package wireguard_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
	"github.com/isthmus-mesh/isthmus/internal/netnstest"
)

// TestRestartKeepsKeyAndReconciles restarts the agent's WireGuard part
// and checks that the node keeps its key and that SetPeers brings the
// device, whatever it holds, to exactly the wanted peers and routes.
func TestRestartKeepsKeyAndReconciles(t *testing.T) {
	netnstest.Require(t)
	requireTools(t, "wg", "ip")
	for _, mode := range []wireguard.Mode{wireguard.ModeUserspace, wireguard.ModeKernel} {
		t.Run(mode.String(), func(t *testing.T) {
			ns := netnstest.NewNamespace(t, "nt-restart")
			if mode == wireguard.ModeKernel {
				requireKernelWireGuard(t, ns)
			}
			testRestart(t, ns, mode)
		})
	}
}

func testRestart(t *testing.T, ns *netnstest.Namespace, mode wireguard.Mode) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := wireguard.Config{StateDir: t.TempDir(), DeviceName: uniqueDeviceName(t), Mode: mode, ListenPort: 51999}
	k1, k2, k3 := newPublicKey(t), newPublicKey(t), newPublicKey(t)
	p1 := wireguard.Peer{Name: "c2/n1", PublicKey: k1, Endpoint: netip.MustParseAddrPort("192.0.2.1:51871"),
		AllowedIPs: mustPrefixes("10.9.1.0/24")}
	p2 := wireguard.Peer{Name: "c2/n2", PublicKey: k2, Endpoint: netip.MustParseAddrPort("192.0.2.2:51871"),
		AllowedIPs: mustPrefixes("10.9.2.0/24", "fd00:9:2::/64")}
	bad := wireguard.Peer{Name: "c3/bad", PublicKey: "not-a-key", Endpoint: netip.MustParseAddrPort("192.0.2.9:51871")}

	first := startWGNode(ctx, t, ns, cfg)
	if first.Mode != mode.String() {
		t.Fatalf("mode = %s, want %s", first.Mode, mode)
	}
	skipped := first.setPeers(ctx, t, p1, bad, p2)
	if len(skipped) != 1 || !strings.Contains(skipped[0], "c3/bad") {
		t.Errorf("skipped = %q, want only c3/bad", skipped)
	}
	checkRoutes(t, ns, cfg.DeviceName, append(p1.AllowedIPs, p2.AllowedIPs...))
	checkPeers(ctx, t, ns, cfg.DeviceName, p1, p2)
	if err := first.Call(ctx, "Close", struct{}{}, &struct{}{}); err != nil {
		t.Fatal(err)
	}
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}

	_, err := ns.Netlink(t).LinkByName(cfg.DeviceName)
	switch mode {
	case wireguard.ModeUserspace:
		// A userspace device goes with its process, socket and all.
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			t.Errorf("userspace device after Close: %v, want it gone", err)
		}
		if _, err := os.Stat(filepath.Join("/var/run/wireguard", cfg.DeviceName+".sock")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("UAPI socket after Close: %v, want it removed", err)
		}
	case wireguard.ModeKernel:
		// A kernel device outlives the agent, still forwarding.
		if err != nil {
			t.Fatalf("kernel device after Close: %v, want it kept", err)
		}
		checkRoutes(t, ns, cfg.DeviceName, append(p1.AllowedIPs, p2.AllowedIPs...))
	}

	// The restarted agent has the same key, and reconciles what it finds:
	// the device is adopted (kernel) or new; a stale peer and a stale
	// route of ours are planted as an earlier run could have left them,
	// and a route someone else put through the device must stay.
	second := startWGNode(ctx, t, ns, cfg)
	if second.PublicKey != first.PublicKey {
		t.Fatalf("public key after restart = %s, want %s", second.PublicKey, first.PublicKey)
	}
	for _, cmd := range [][]string{
		{"wg", "set", cfg.DeviceName, "peer", k3, "endpoint", "192.0.2.3:51871", "allowed-ips", "10.9.3.0/24"},
		{"ip", "route", "replace", "10.9.3.0/24", "dev", cfg.DeviceName, "proto", "73"},
		{"ip", "route", "replace", "10.9.4.0/24", "dev", cfg.DeviceName, "proto", "static"},
	} {
		if _, err := ns.Run(ctx, cmd[0], cmd[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	p2.Endpoint = netip.MustParseAddrPort("192.0.2.22:51871")
	p2.AllowedIPs = mustPrefixes("10.9.2.0/24", "10.9.5.7/32")
	if s := second.setPeers(ctx, t, p2); len(s) != 0 {
		t.Errorf("skipped: %v", s)
	}
	checkPeers(ctx, t, ns, cfg.DeviceName, p2)
	checkRoutes(t, ns, cfg.DeviceName, p2.AllowedIPs)
	if got := deviceRoutes(t, ns, cfg.DeviceName, unix.RTPROT_STATIC); len(got) != 1 || got[0] != netip.MustParsePrefix("10.9.4.0/24") {
		t.Errorf("foreign routes through the device = %v, want 10.9.4.0/24 left alone", got)
	}
	// Idempotent: the same peers again change nothing.
	second.setPeers(ctx, t, p2)
	checkPeers(ctx, t, ns, cfg.DeviceName, p2)
	checkRoutes(t, ns, cfg.DeviceName, p2.AllowedIPs)

	if err := second.Call(ctx, "Delete", struct{}{}, &struct{}{}); err != nil {
		t.Fatal(err)
	}
	var notFound netlink.LinkNotFoundError
	if _, err := ns.Netlink(t).LinkByName(cfg.DeviceName); !errors.As(err, &notFound) {
		t.Errorf("device after Delete: %v, want it gone", err)
	}
}

// checkPeers checks with wg(8) that the device has exactly want, with
// their endpoints and AllowedIPs.
func checkPeers(ctx context.Context, t *testing.T, ns *netnstest.Namespace, dev string, want ...wireguard.Peer) {
	t.Helper()
	out, err := ns.Run(ctx, "wg", "show", dev, "dump")
	if err != nil {
		t.Fatal(err)
	}
	// The first line is the device; then one line per peer: key, psk,
	// endpoint, allowed ips, handshake, rx, tx, keepalive.
	got := make(map[string]string)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Split(line, "\t")
		got[f[0]] = f[2] + " " + f[3]
	}
	if len(got) != len(want) {
		t.Errorf("device %s has %d peers, want %d:\n%s", dev, len(got), len(want), out)
	}
	for _, p := range want {
		var ips []string
		for _, a := range p.AllowedIPs {
			ips = append(ips, a.String())
		}
		if w := p.Endpoint.String() + " " + strings.Join(ips, ","); got[p.PublicKey] != w {
			t.Errorf("peer %s: endpoint and allowed IPs %q, want %q", p.Name, got[p.PublicKey], w)
		}
	}
}

func newPublicKey(t *testing.T) string {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().String()
}

// requireKernelWireGuard skips when the kernel cannot create WireGuard
// links: a missing kernel feature, not a missing privilege.
func requireKernelWireGuard(t *testing.T, ns *netnstest.Namespace) {
	t.Helper()
	h := ns.Netlink(t)
	probe := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wgprobe"}}
	err := h.LinkAdd(probe)
	if errors.Is(err, unix.EOPNOTSUPP) {
		t.Skip("kernel has no WireGuard (creating a wireguard link: operation not supported); the userspace mode is tested instead")
	}
	if err != nil {
		t.Fatalf("probe kernel WireGuard: %v", err)
	}
	if err := h.LinkDel(probe); err != nil {
		t.Fatal(err)
	}
}

// TestNewRefusesAConflictingDevice checks the clear failures New gives
// when its device name is taken.
func TestNewRefusesAConflictingDevice(t *testing.T) {
	netnstest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// A link of another kind under the name.
	ns := netnstest.NewNamespace(t, "nt-conflict")
	name := uniqueDeviceName(t)
	if err := ns.Netlink(t).LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatal(err)
	}
	child := netnstest.StartChild(t, ns, helperNode)
	var reply StartReply
	err := child.Call(ctx, "Start", wireguard.Config{StateDir: t.TempDir(), DeviceName: name}, &reply)
	if err == nil || !strings.Contains(err.Error(), "exists as a bridge link") {
		t.Errorf("New over a bridge: %v, want an error naming the bridge", err)
	}

	// A userspace device of the same name in another namespace: the UAPI
	// socket directory is machine-wide, so the lab must name each node's
	// device apart.
	name = uniqueDeviceName(t)
	ns1 := netnstest.NewNamespace(t, "nt-conflict1")
	startWGNode(ctx, t, ns1, wireguard.Config{DeviceName: name, Mode: wireguard.ModeUserspace})
	child = netnstest.StartChild(t, netnstest.NewNamespace(t, "nt-conflict2"), helperNode)
	err = child.Call(ctx, "Start", wireguard.Config{StateDir: t.TempDir(), DeviceName: name, Mode: wireguard.ModeUserspace}, &reply)
	if err == nil || !strings.Contains(err.Error(), "shared by all network namespaces") {
		t.Errorf("second userspace device named %s: %v, want an error about the shared socket directory", name, err)
	}
	// A second device on the port the first listens on.
	child = netnstest.StartChild(t, ns1, helperNode)
	second := uniqueDeviceName(t)
	err = child.Call(ctx, "Start", wireguard.Config{StateDir: t.TempDir(), DeviceName: second, Mode: wireguard.ModeUserspace}, &reply)
	if err == nil || !strings.Contains(err.Error(), "UDP port 51871") {
		t.Errorf("second device on port 51871 in one namespace: %v, want an error naming the port", err)
	}
	// The half-built device is gone, socket and all.
	var notFound netlink.LinkNotFoundError
	if _, err := ns1.Netlink(t).LinkByName(second); !errors.As(err, &notFound) {
		t.Errorf("device %s after the failed New: %v, want it removed", second, err)
	}
	if _, err := os.Stat(filepath.Join("/var/run/wireguard", second+".sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("UAPI socket of %s after the failed New: %v, want it removed", second, err)
	}
	// The failed attempts left the first device alone.
	if _, err := ns1.Run(ctx, "wg", "show", name); err != nil {
		t.Errorf("first device after the clashes: %v", err)
	}
}

// TestKernelModeWithoutKernelWireGuard checks that forcing kernel mode on
// a kernel without WireGuard fails plainly and leaves nothing behind,
// where auto mode falls back to userspace (TestTunnelBetweenClusters).
func TestKernelModeWithoutKernelWireGuard(t *testing.T) {
	netnstest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := netnstest.NewNamespace(t, "nt-nokernel")
	probe := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wgprobe"}}
	if err := ns.Netlink(t).LinkAdd(probe); err == nil {
		t.Skip("this kernel has WireGuard")
	}
	name := uniqueDeviceName(t)
	child := netnstest.StartChild(t, ns, helperNode)
	var reply StartReply
	err := child.Call(ctx, "Start", wireguard.Config{StateDir: t.TempDir(), DeviceName: name, Mode: wireguard.ModeKernel}, &reply)
	if err == nil || !strings.Contains(err.Error(), "create kernel WireGuard device "+name) || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("ModeKernel without kernel WireGuard: %v, want an error saying kernel WireGuard is not supported", err)
	}
	var notFound netlink.LinkNotFoundError
	if _, err := ns.Netlink(t).LinkByName(name); !errors.As(err, &notFound) {
		t.Errorf("device after the failed New: %v, want none", err)
	}
}
