package tunnelpolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/netnstest"
)

// tunDevice is a TUN device in a test namespace: an L3 device like the
// userspace WireGuard's, so the programs meet packets that start at the IP
// header, delivered by the real stack.
type tunDevice struct {
	ns      *netnstest.Namespace
	name    string
	ifindex int
	file    *os.File // write: packets the device receives; read: packets it sends
}

func newTUN(t *testing.T) *tunDevice {
	t.Helper()
	d := &tunDevice{ns: netnstest.NewNamespace(t, "isthmus-tun"), name: "ist" + bpffstest.Suffix()}
	// The device is created in the namespace of the thread that opens it.
	err := d.ns.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(d.name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err == nil {
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("create TUN device: %w", err)
		}
		d.file = os.NewFile(uintptr(fd), d.name) // pollable: deadlines work
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.file.Close() }) // a non-persistent TUN goes with its fd

	h := d.ns.Netlink(t)
	l, err := h.LinkByName(d.name)
	if err != nil {
		t.Fatal(err)
	}
	d.ifindex = l.Attrs().Index
	addr, _ := netlink.ParseAddr(localIP + "/24")
	if err := h.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	_, dst, _ := net.ParseCIDR("10.2.0.0/16")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: d.ifindex, Dst: dst}); err != nil {
		t.Fatal(err)
	}
	return d
}

// udpListener listens in the device's namespace.
func (d *tunDevice) udpListener(t *testing.T, port int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := d.ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(localIP), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// inject hands the device a packet, as WireGuard does after decryption.
func (d *tunDevice) inject(t *testing.T, p pktSpec) {
	t.Helper()
	if _, err := d.file.Write(ipPacket(p)); err != nil {
		t.Fatalf("write to TUN: %v", err)
	}
}

func received(t *testing.T, c *net.UDPConn, wait time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64)
	_, _, err := c.ReadFrom(buf)
	if err == nil {
		return true
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
	return false
}

// waitCounter waits until the counter for r reaches n.
func waitCounter(t *testing.T, m *maps.Maps, r Reason, n uint64) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := ReadCounters(m)
		if err != nil {
			t.Fatal(err)
		}
		if c[r].Packets >= n {
			return
		}
		select {
		case <-deadline:
			t.Fatalf("counter %s stayed at %d, want %d (all: %v)", r, c[r].Packets, n, c)
		case <-tick.C:
		}
	}
}

// enforcingFixture programs identities, ingress policy for the local endpoint
// (UDP/80 from the remote identity only) and returns the enforcer.
func enforcingFixture(t *testing.T, cfg Config) (*fixture, *tunDevice) {
	t.Helper()
	f := newFixture(t, cfg)
	f.enforce(t, idLocal, maps.Enforced{Ingress: true})
	f.allow(t, maps.PolicyEntryKey{Direction: maps.Ingress, LocalIdentity: idLocal, RemoteIdentity: idRemote, Port: 80, Protocol: maps.ProtoUDP}, 51)
	return f, newTUN(t)
}

func (f *fixture) attach(t *testing.T, e *Enforcer, d *tunDevice) {
	t.Helper()
	if err := d.ns.Do(func() error { return e.Attach(d.ifindex) }); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) detach(t *testing.T, e *Enforcer, d *tunDevice) {
	t.Helper()
	if err := d.ns.Do(func() error { return e.Detach(d.ifindex) }); err != nil {
		t.Fatal(err)
	}
}

func TestTCXOnTUNDevice(t *testing.T) {
	f, d := enforcingFixture(t, Config{Mode: AttachTCX})
	f.attach(t, f.e, d)
	t.Cleanup(func() { f.detach(t, f.e, d) })
	on80, on81 := d.udpListener(t, 80), d.udpListener(t, 81)

	d.inject(t, udp(remoteIP+":5000", localIP+":80"))
	if !received(t, on80, 5*time.Second) {
		t.Fatal("allowed datagram not delivered")
	}
	d.inject(t, udp(remoteIP+":5000", localIP+":81"))
	waitCounter(t, f.m, ReasonNoMatch, 1)
	if received(t, on81, 0) {
		t.Fatal("denied datagram delivered")
	}

	// Egress: a local socket's packet leaves through the device when
	// allowed (egress is not enforced) and is tracked for its reply.
	var c *net.UDPConn
	if err := d.ns.Do(func() (err error) {
		c, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(localIP), Port: 6000}, &net.UDPAddr{IP: net.ParseIP(remoteIP), Port: 53})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	if !d.sent(t, netip.MustParseAddr(remoteIP)) {
		t.Fatal("allowed egress packet did not leave through the device")
	}
	d.inject(t, udp(remoteIP+":53", localIP+":6000"))
	if !received(t, c, 5*time.Second) {
		t.Fatal("reply of the egress flow not delivered")
	}

	// Restart: the pinned links are reused with the new programs.
	pin := filepath.Join(f.m.Root(), LinkDir, "tcx_"+d.name+"_ingress")
	before := linkInfo(t, pin)
	if err := f.e.Close(); err != nil {
		t.Fatal(err)
	}
	e2, err := New(f.m, Config{Mode: AttachTCX})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	f.attach(t, e2, d)
	after := linkInfo(t, pin)
	if after.ID != before.ID || after.Program == before.Program {
		t.Fatalf("link %d prog %d -> link %d prog %d: want the same link with a new program", before.ID, before.Program, after.ID, after.Program)
	}
	d.inject(t, udp(remoteIP+":5001", localIP+":81"))
	waitCounter(t, f.m, ReasonNoMatch, 2)

	// Detach: policy no longer applies.
	f.detach(t, e2, d)
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin left after Detach: %v", err)
	}
	d.inject(t, udp(remoteIP+":5002", localIP+":81"))
	if !received(t, on81, 5*time.Second) {
		t.Fatal("datagram dropped after Detach")
	}
}

// sent reports whether the device sends a packet to dst within the deadline.
func (d *tunDevice) sent(t *testing.T, dst netip.Addr) bool {
	t.Helper()
	_ = d.file.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	for {
		n, err := d.file.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		if n >= 20 && buf[0]>>4 == 4 && netip.AddrFrom4([4]byte(buf[16:20])) == dst {
			return true
		}
	}
}

func linkInfo(t *testing.T, pin string) *link.Info {
	t.Helper()
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func TestClsactOnTUNDevice(t *testing.T) {
	f, d := enforcingFixture(t, Config{Mode: AttachClsact})
	f.attach(t, f.e, d)
	// Twice: replacing the filter in place, not stacking a second one.
	f.attach(t, f.e, d)
	t.Cleanup(func() { f.detach(t, f.e, d) })
	if n := ourFilters(t, d); n != 2 {
		t.Fatalf("%d isthmus filters on the device, want 2 (ingress, egress)", n)
	}
	on80, on81 := d.udpListener(t, 80), d.udpListener(t, 81)
	d.inject(t, udp(remoteIP+":5000", localIP+":80"))
	if !received(t, on80, 5*time.Second) {
		t.Fatal("allowed datagram not delivered")
	}
	d.inject(t, udp(remoteIP+":5000", localIP+":81"))
	waitCounter(t, f.m, ReasonNoMatch, 1)
	if received(t, on81, 0) {
		t.Fatal("denied datagram delivered")
	}

	// Switching to tcx removes the clsact filters.
	e2, err := New(f.m, Config{Mode: AttachAuto})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	f.attach(t, e2, d)
	if n := ourFilters(t, d); n != 0 {
		t.Fatalf("%d clsact filters left after moving to tcx", n)
	}
	f.detach(t, e2, d)
}

func ourFilters(t *testing.T, d *tunDevice) int {
	t.Helper()
	h := d.ns.Netlink(t)
	l, err := h.LinkByIndex(d.ifindex)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := h.FilterList(l, parent)
		if err != nil {
			continue // no clsact qdisc
		}
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Priority == clsactPriority {
				n++
			}
		}
	}
	return n
}

// TestDetachNameAfterDeviceGone: tcx links go with their device, but their
// pins stay until DetachName removes them; attaching to a new device of
// the same name replaces them.
func TestDetachNameAfterDeviceGone(t *testing.T) {
	f, d := enforcingFixture(t, Config{Mode: AttachTCX})
	f.attach(t, f.e, d)
	pin := filepath.Join(f.m.Root(), LinkDir, "tcx_"+d.name+"_ingress")
	if err := d.file.Close(); err != nil { // removes the TUN device
		t.Fatal(err)
	}
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("pin gone with the device: %v", err)
	}
	if err := f.e.DetachName(d.name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin left after DetachName: %v", err)
	}
}
