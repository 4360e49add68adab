package wireguard_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
	"github.com/isthmus-mesh/isthmus/internal/netnstest"
)

// TestHelperDeviceOutlivesTheAgent runs node a's userspace device in a
// helper process (Config.UserspaceHelper) and checks that pod traffic
// keeps flowing while a's agent is gone, that the restarted agent adopts
// the device with its peers and key, and that Delete removes the device,
// its helper and its socket.
func TestHelperDeviceOutlivesTheAgent(t *testing.T) {
	netnstest.Require(t)
	requireTools(t, "wg")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	pidFile := filepath.Join(t.TempDir(), "helpers")
	if err := os.WriteFile(pidFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killHelpers(t, pidFile) })
	helperEnv := []string{envHelperPIDs + "=" + pidFile, envOwner + "=" + strconv.Itoa(os.Getpid())}

	u := netnstest.NewUnderlay(t, netnstest.UnderlayConfig{Prefix: netip.MustParsePrefix("192.168.78.0/24")})
	a := u.AddNode(t, netnstest.NodeConfig{Name: "a", Cluster: "c1", PodCIDRs: mustPrefixes("10.3.0.0/24")})
	b := u.AddNode(t, netnstest.NodeConfig{Name: "b", Cluster: "c2", PodCIDRs: mustPrefixes("10.4.0.0/24")})
	podA := a.AddPod(t, "pa")
	podB := b.AddPod(t, "pb")

	cfgA := wireguard.Config{StateDir: t.TempDir(), DeviceName: uniqueDeviceName(t)}
	first := &wgNode{Child: netnstest.StartChild(t, a.NS, helperNode, helperEnv...), ns: a.NS}
	if err := first.Call(ctx, "Start", cfgA, &first.StartReply); err != nil {
		t.Fatal(err)
	}
	if first.Mode != wireguard.ModeUserspace.String() {
		t.Skipf("node a uses %s WireGuard; the helper serves userspace devices only", first.Mode)
	}
	wb := startWGNode(ctx, t, b.NS, wireguard.Config{})
	peerA := wireguard.Peer{Name: "c1/a", PublicKey: first.PublicKey, Endpoint: netip.AddrPortFrom(a.IP, wireguard.DefaultListenPort), AllowedIPs: a.PodCIDRs}
	peerB := wireguard.Peer{Name: "c2/b", PublicKey: wb.PublicKey, Endpoint: netip.AddrPortFrom(b.IP, wireguard.DefaultListenPort), AllowedIPs: b.PodCIDRs}
	first.setPeers(ctx, t, peerB)
	wb.setPeers(ctx, t, peerA)
	portB := podB.ServeEcho(t, 0)
	toB := netip.AddrPortFrom(podB.IP(true), uint16(portB)).String()
	if _, err := netnstest.Exchange(ctx, podA.NS, toB, 1<<16); err != nil {
		t.Fatalf("pod a -> pod b: %v", err)
	}

	// a's agent goes away; its device, peers and routes stay, and carry
	// traffic in both directions, new connections included.
	if err := first.Call(ctx, "Close", struct{}{}, &struct{}{}); err != nil {
		t.Fatal(err)
	}
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.NS.Netlink(t).LinkByName(cfgA.DeviceName); err != nil {
		t.Fatalf("device after the agent stopped: %v, want it kept by the helper", err)
	}
	checkRoutes(t, a.NS, cfgA.DeviceName, peerB.AllowedIPs)
	if _, err := netnstest.Exchange(ctx, podA.NS, toB, 1<<16); err != nil {
		t.Fatalf("pod a -> pod b with a's agent stopped: %v", err)
	}
	portA := podA.ServeEcho(t, 0)
	if _, err := netnstest.Exchange(ctx, podB.NS, netip.AddrPortFrom(podA.IP(true), uint16(portA)).String(), 1<<16); err != nil {
		t.Fatalf("pod b -> pod a with a's agent stopped: %v", err)
	}

	// The restarted agent adopts the device, key, peers and all.
	second := &wgNode{Child: netnstest.StartChild(t, a.NS, helperNode, helperEnv...), ns: a.NS}
	if err := second.Call(ctx, "Start", cfgA, &second.StartReply); err != nil {
		t.Fatal(err)
	}
	if second.PublicKey != first.PublicKey || second.Mode != wireguard.ModeUserspace.String() {
		t.Errorf("restarted: key %s mode %s, want %s userspace", second.PublicKey, second.Mode, first.PublicKey)
	}
	if n := len(readPIDs(t, pidFile)); n != 1 {
		t.Errorf("%d helper processes started, want 1 (the restarted agent adopts the first's)", n)
	}
	checkPeers(ctx, t, a.NS, cfgA.DeviceName, peerB)
	second.setPeers(ctx, t, peerB)
	if _, err := netnstest.Exchange(ctx, podA.NS, toB, 1<<16); err != nil {
		t.Fatalf("pod a -> pod b after the restart: %v", err)
	}

	// Delete removes the device; the helper exits and takes its socket.
	if err := second.Call(ctx, "Delete", struct{}{}, &struct{}{}); err != nil {
		t.Fatal(err)
	}
	var notFound netlink.LinkNotFoundError
	if _, err := a.NS.Netlink(t).LinkByName(cfgA.DeviceName); !errors.As(err, &notFound) {
		t.Errorf("device after Delete: %v, want it gone", err)
	}
	// The helper is not our child: poll for it to be gone.
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for _, pid := range readPIDs(t, pidFile) {
		for syscall.Kill(pid, 0) == nil {
			select {
			case <-deadline:
				t.Fatalf("helper %d still runs after Delete", pid)
			case <-tick.C:
			}
		}
	}
	if _, err := os.Stat(filepath.Join("/var/run/wireguard", cfgA.DeviceName+".sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("UAPI socket after Delete: %v, want it removed", err)
	}
}

func readPIDs(t *testing.T, file string) []int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("helper PID file: %v", err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// killHelpers kills helpers a failed test left running, and shows their
// log when it failed.
func killHelpers(t *testing.T, file string) {
	for _, pid := range readPIDs(t, file) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if t.Failed() {
		b, _ := os.ReadFile(file + ".log")
		t.Logf("helper log:\n%s", b)
	}
}
