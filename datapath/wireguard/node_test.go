package wireguard_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
	"github.com/isthmus-mesh/isthmus/internal/netnstest"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// The tests run each node's WireGuard in a child process born in the
// node's namespace, as the agent runs: userspace WireGuard opens its UDP
// sockets and TUN device in the process's namespace.
const helperNode = "wgnode"

// envServe makes the test binary a userspace device helper process
// (wireguard.ServeUserspace) for the device it names; envHelperPIDs makes
// node children start such helpers, each writing its PID into the file
// the variable names so that the test can kill those that outlive it.
const (
	envServe      = "WGTEST_SERVE_DEVICE"
	envHelperPIDs = "WGTEST_HELPER_PIDS"
	// envOwner is the test process's PID: a helper exits once it is gone,
	// so that a test killed before its cleanup (a timeout) leaks none.
	envOwner = "WGTEST_OWNER_PID"
)

func TestMain(m *testing.M) {
	if dev := os.Getenv(envServe); dev != "" {
		os.Exit(serveDevice(dev))
	}
	netnstest.Main(m, map[string]netnstest.Helper{helperNode: runNode})
}

// serveDevice is the helper process of a node child in helper mode.
func serveDevice(dev string) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if f, err := os.OpenFile(os.Getenv(envHelperPIDs), os.O_APPEND|os.O_WRONLY, 0); err == nil {
		fmt.Fprintln(f, os.Getpid())
		f.Close()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if owner, err := strconv.Atoi(os.Getenv(envOwner)); err == nil {
		ctx = untilGone(ctx, owner)
	}
	mtu, _ := strconv.Atoi(os.Getenv(envServe + "_MTU"))
	if err := wireguard.ServeUserspace(ctx, logger, dev, mtu); err != nil {
		logger.Error("serve", "err", err)
		return 1
	}
	return 0
}

// untilGone returns a context that ends when process pid is gone.
func untilGone(ctx context.Context, pid int) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for syscall.Kill(pid, 0) == nil {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return ctx
}

// helperCommand starts this test binary as a device helper. It logs into
// a file next to the PID file: a helper outlives the node child, and must
// not hold the child's stderr pipe open.
func helperCommand(device string, mtu int) *exec.Cmd {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envServe+"="+device, envServe+"_MTU="+strconv.Itoa(mtu))
	if f, err := os.OpenFile(os.Getenv(envHelperPIDs)+".log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600); err == nil {
		cmd.Stderr = f // the child's copy closes with the child
	}
	return cmd
}

func runNode(conn io.ReadWriteCloser) error {
	n := &nodeRPC{logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	err := netnstest.ServeRPC(conn, n)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dev != nil {
		err = errors.Join(err, n.dev.Close())
	}
	return err
}

// nodeRPC is the helper's RPC receiver: the WireGuard part of a node
// agent, driven by the test.
type nodeRPC struct {
	logger *slog.Logger

	mu  sync.Mutex // guards dev
	dev *wireguard.Device
}

// StartReply describes the device New made.
type StartReply struct {
	PublicKey, Name, Mode string
	ListenPort, MTU       int
}

func (n *nodeRPC) device() (*wireguard.Device, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dev == nil {
		return nil, errors.New("no device: call Start first")
	}
	return n.dev, nil
}

func (n *nodeRPC) Start(cfg wireguard.Config, reply *StartReply) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dev != nil {
		return errors.New("already started")
	}
	if os.Getenv(envHelperPIDs) != "" {
		cfg.UserspaceHelper = helperCommand
	}
	dev, err := wireguard.New(n.logger, cfg)
	if err != nil {
		return err
	}
	n.dev = dev
	*reply = StartReply{PublicKey: dev.PublicKey(), Name: dev.Name(), Mode: dev.Mode().String(), ListenPort: dev.ListenPort(), MTU: dev.MTU()}
	return nil
}

func (n *nodeRPC) SetPeers(peers []wireguard.Peer, skipped *[]string) error {
	dev, err := n.device()
	if err != nil {
		return err
	}
	errs, err := dev.SetPeers(context.Background(), peers)
	for _, e := range errs {
		*skipped = append(*skipped, e.Error())
	}
	return err
}

func (n *nodeRPC) Peers(_ struct{}, reply *[]wireguard.PeerStatus) error {
	dev, err := n.device()
	if err != nil {
		return err
	}
	*reply, err = dev.Peers()
	return err
}

func (n *nodeRPC) MTU(_ struct{}, reply *int) error {
	dev, err := n.device()
	if err != nil {
		return err
	}
	*reply = dev.MTU()
	return nil
}

func (n *nodeRPC) Close(_ struct{}, _ *struct{}) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dev == nil {
		return nil
	}
	err := n.dev.Close()
	n.dev = nil
	return err
}

func (n *nodeRPC) Delete(_ struct{}, _ *struct{}) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dev == nil {
		return errors.New("no device")
	}
	err := n.dev.Delete()
	n.dev = nil
	return err
}

// wgNode is the parent's side of a node helper.
type wgNode struct {
	*netnstest.Child
	StartReply
	ns *netnstest.Namespace
}

// startWGNode starts a node helper in ns and its device with cfg.
// An empty DeviceName gets a name unique on the machine; an empty
// StateDir a fresh directory.
func startWGNode(ctx context.Context, t testing.TB, ns *netnstest.Namespace, cfg wireguard.Config) *wgNode {
	t.Helper()
	if cfg.DeviceName == "" {
		cfg.DeviceName = uniqueDeviceName(t)
	}
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	n := &wgNode{Child: netnstest.StartChild(t, ns, helperNode), ns: ns}
	if err := n.Call(ctx, "Start", cfg, &n.StartReply); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *wgNode) setPeers(ctx context.Context, t testing.TB, peers ...wireguard.Peer) []string {
	t.Helper()
	var skipped []string
	if err := n.Call(ctx, "SetPeers", peers, &skipped); err != nil {
		t.Fatal(err)
	}
	return skipped
}

func (n *wgNode) peers(ctx context.Context, t testing.TB) []wireguard.PeerStatus {
	t.Helper()
	var st []wireguard.PeerStatus
	if err := n.Call(ctx, "Peers", struct{}{}, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// uniqueDeviceName returns a device name no other test on the machine
// uses: userspace devices share /var/run/wireguard across namespaces. A
// socket left by a killed child is removed when the test ends.
func uniqueDeviceName(t testing.TB) string {
	name := "wgt" + randomHex(t, 4)
	t.Cleanup(func() { os.Remove(filepath.Join("/var/run/wireguard", name+".sock")) })
	return name
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// requireTools fails or skips (see privileged.Unavailable) when a tool the
// test runs is not installed.
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			pkg := map[string]string{"wg": "wireguard-tools", "iperf3": "iperf3", "ip": "iproute2"}[tool]
			privileged.Unavailable(t, fmt.Sprintf("%s is not installed (apt-get install %s)", tool, pkg))
		}
	}
}

func mustPrefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}
