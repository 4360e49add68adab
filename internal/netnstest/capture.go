package netnstest

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// EtherTypes a Frame may carry.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86dd
)

// Frame is one captured Ethernet frame, decoded as far as the transport
// ports.
type Frame struct {
	// Interface is the index of the link it was seen on, in the captured
	// namespace; Outgoing says it was seen leaving that link.
	Interface int
	Outgoing  bool
	EtherType uint16
	// For IPv4 and IPv6: the transport protocol (unix.IPPROTO_*) and the
	// addresses.
	Protocol uint8
	Src, Dst netip.Addr
	// For TCP and UDP (and the first fragment of a fragmented packet).
	SrcPort, DstPort uint16
	Len              int
}

func (f Frame) String() string {
	dir := "in"
	if f.Outgoing {
		dir = "out"
	}
	switch f.EtherType {
	case EtherTypeIPv4, EtherTypeIPv6:
		return fmt.Sprintf("if%d %s proto %d %s -> %s (%d bytes)", f.Interface, dir, f.Protocol,
			netip.AddrPortFrom(f.Src, f.SrcPort), netip.AddrPortFrom(f.Dst, f.DstPort), f.Len)
	}
	return fmt.Sprintf("if%d %s ethertype %#04x (%d bytes)", f.Interface, dir, f.EtherType, f.Len)
}

// Capture records every frame received or sent on every link of a
// namespace, through an AF_PACKET socket. A bridged frame is seen twice:
// entering one port and leaving another.
type Capture struct {
	file    *os.File
	done    chan struct{}
	stopped atomic.Bool

	mu     sync.Mutex // guards frames and err
	frames []Frame
	err    error
}

// captureBuffer is large enough that a test's bulk transfer does not
// overflow the socket while the reader catches up; Stop reports drops.
const captureBuffer = 32 << 20

// Capture starts capturing in the namespace. Stop it to get the frames.
func (ns *Namespace) Capture() (*Capture, error) {
	return startCapture(ns.name, ns.Do)
}

// CaptureAt starts capturing in the network namespace bound at path, one
// this package did not create (a lab's underlay, say). Stop it to get the
// frames.
func CaptureAt(path string) (*Capture, error) {
	return startCapture(path, func(f func() error) error {
		return onLockedThread(func() error {
			h, err := netns.GetFromPath(path)
			if err != nil {
				return fmt.Errorf("open netns %s: %w", path, err)
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				return fmt.Errorf("enter netns %s: %w", path, err)
			}
			return f()
		})
	})
}

// startCapture opens the packet socket inside a namespace through do.
func startCapture(name string, do func(func() error) error) (*Capture, error) {
	var fd int
	err := do(func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: open packet socket: %w", name, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, captureBuffer); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netns %s: size packet socket buffer: %w", name, err)
	}
	c := &Capture{file: os.NewFile(uintptr(fd), "packet-"+name), done: make(chan struct{})}
	go c.read()
	return c, nil
}

func (c *Capture) read() {
	defer close(c.done)
	rc, err := c.file.SyscallConn()
	if err != nil {
		c.fail(err)
		return
	}
	buf := make([]byte, 1<<16)
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			if !c.stopped.Load() {
				c.fail(err)
			}
			return
		}
		f := decodeFrame(buf[:n])
		if ll, ok := from.(*unix.SockaddrLinklayer); ok {
			f.Interface = ll.Ifindex
			f.Outgoing = ll.Pkttype == unix.PACKET_OUTGOING
		}
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
	}
}

func (c *Capture) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

// Stop ends the capture and returns the frames seen. It fails when the
// socket dropped frames, because then not every frame was seen.
func (c *Capture) Stop() ([]Frame, error) {
	var drops uint32
	rc, err := c.file.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) {
			var st *unix.TpacketStats
			st, err = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
			if err == nil {
				drops = st.Drops
			}
		})
	}
	c.stopped.Store(true)
	c.file.Close()
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
		return c.frames, fmt.Errorf("capture: %w", c.err)
	case err != nil:
		return c.frames, fmt.Errorf("capture statistics: %w", err)
	case drops > 0:
		return c.frames, fmt.Errorf("capture dropped %d frames", drops)
	}
	return c.frames, nil
}

// decodeFrame decodes what it can; a truncated frame keeps the fields it
// had room for.
func decodeFrame(b []byte) Frame {
	f := Frame{Len: len(b)}
	if len(b) < 14 {
		return f
	}
	f.EtherType = binary.BigEndian.Uint16(b[12:14])
	b = b[14:]
	var l4 []byte
	switch f.EtherType {
	case EtherTypeIPv4:
		if len(b) < 20 {
			return f
		}
		f.Protocol = b[9]
		f.Src = netip.AddrFrom4([4]byte(b[12:16]))
		f.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		ihl := int(b[0]&0x0f) * 4
		fragOffset := binary.BigEndian.Uint16(b[6:8]) & 0x1fff
		if fragOffset == 0 && ihl >= 20 && len(b) >= ihl {
			l4 = b[ihl:]
		}
	case EtherTypeIPv6:
		if len(b) < 40 {
			return f
		}
		f.Protocol = b[6]
		f.Src = netip.AddrFrom16([16]byte(b[8:24]))
		f.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		l4 = b[40:]
	}
	if (f.Protocol == unix.IPPROTO_TCP || f.Protocol == unix.IPPROTO_UDP) && len(l4) >= 4 {
		f.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		f.DstPort = binary.BigEndian.Uint16(l4[2:4])
	}
	return f
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
