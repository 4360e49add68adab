package socklb

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The socket LB acts on sockets created by processes in the attached
// cgroup, so every connect in these tests comes from a child process (this
// test binary, re-executed) started directly inside a test cgroup and run
// in a test network namespace. The parent sends it a list of operations and
// reads back what each one saw.

const clientEnv = "ISTHMUS_SOCKLB_CLIENT"

func TestMain(m *testing.M) {
	if spec := os.Getenv(clientEnv); spec != "" {
		os.Exit(runClient(spec))
	}
	os.Exit(m.Run())
}

// op is one client operation.
type op struct {
	Kind string `json:"kind"` // tcp, tcp6mapped, udp, udpconnected, bench
	Addr string `json:"addr"` // host:port to use
	// bench: N connects per variant, in batches of Batch, variants
	// interleaved batch by batch.
	N        int       `json:"n,omitempty"`
	Batch    int       `json:"batch,omitempty"`
	Variants []variant `json:"variants,omitempty"`
}

// variant is one way of connecting, for benchmarks: where the client
// runs (namespace and cgroup) and which addresses it connects to, round
// robin.
type variant struct {
	Name   string   `json:"name"`
	Netns  string   `json:"netns"`
	Cgroup string   `json:"cgroup"`
	Addrs  []string `json:"addrs"`
}

// result is what an operation saw.
type result struct {
	Backend string `json:"backend,omitempty"` // name the server answered with
	Peer    string `json:"peer,omitempty"`    // getpeername, or the datagram's source
	Err     string `json:"err,omitempty"`
	// bench: per variant, the duration of each batch in nanoseconds, for
	// the whole cycle (socket, connect, close) and for the connect()
	// calls alone.
	Batches  map[string][]int64 `json:"batches,omitempty"`
	Connects map[string][]int64 `json:"connects,omitempty"`
}

type clientSpec struct {
	Netns string `json:"netns"`
	Ops   []op   `json:"ops"`
}

func runClient(raw string) int {
	var spec clientSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "client spec:", err)
		return 2
	}
	// Sockets created on this thread belong to the test namespace.
	runtime.LockOSThread()
	if spec.Netns != "" {
		ns, err := netns.GetFromPath(spec.Netns)
		if err == nil {
			err = netns.Set(ns)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "enter netns:", err)
			return 2
		}
	}
	out := make([]result, 0, len(spec.Ops))
	for _, o := range spec.Ops {
		out = append(out, o.run())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

func (o op) run() result {
	switch o.Kind {
	case "tcp":
		return tcpExchange(o.Addr)
	case "tcp6mapped":
		return tcp6Mapped(o.Addr)
	case "udp":
		return udpUnconnected(o.Addr)
	case "udpconnected":
		return udpConnected(o.Addr)
	case "bench":
		return benchInterleaved(o.Variants, o.N, o.Batch)
	}
	return result{Err: "unknown op " + o.Kind}
}

func errResult(err error) result { return result{Err: err.Error()} }

func peerOf(c syscall.Conn) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var sa unix.Sockaddr
	var serr error
	if err := rc.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil {
		return "", err
	}
	if serr != nil {
		return "", serr
	}
	return sockaddrString(sa), nil
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprintf("%v", sa)
}

func tcpExchange(addr string) result {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return errResult(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return errResult(err)
	}
	peer, err := peerOf(c.(*net.TCPConn))
	if err != nil {
		return errResult(err)
	}
	return result{Backend: strings.TrimSpace(line), Peer: peer}
}

// tcp6Mapped connects an AF_INET6 socket to an IPv4-mapped address, as a
// dual-stack application would; the connect6 hook must handle it.
func tcp6Mapped(addr string) result {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return errResult(err)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errResult(err)
	}
	f := os.NewFile(uintptr(fd), "tcp6")
	defer f.Close()
	tv := unix.Timeval{Sec: 2}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: netip.AddrFrom4(ap.Addr().As4()).As16(), Port: int(ap.Port())}); err != nil {
		return errResult(err)
	}
	buf := make([]byte, 128)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return errResult(err)
	}
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return errResult(err)
	}
	return result{Backend: strings.TrimSpace(string(buf[:n])), Peer: sockaddrString(sa)}
}

func udpUnconnected(addr string) result {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return errResult(err)
	}
	network := "udp4"
	if ap.Addr().Is6() {
		network = "udp6"
	}
	pc, err := net.ListenPacket(network, ":0")
	if err != nil {
		return errResult(err)
	}
	defer pc.Close()
	_ = pc.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := pc.WriteTo([]byte("ping"), net.UDPAddrFromAddrPort(ap)); err != nil {
		return errResult(err)
	}
	buf := make([]byte, 128)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		return errResult(err)
	}
	return result{Backend: string(buf[:n]), Peer: from.(*net.UDPAddr).AddrPort().String()}
}

func udpConnected(addr string) result {
	c, err := net.DialTimeout("udp", addr, 2*time.Second)
	if err != nil {
		return errResult(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return errResult(err)
	}
	buf := make([]byte, 128)
	n, err := c.Read(buf)
	if err != nil {
		return errResult(err)
	}
	peer, err := peerOf(c.(*net.UDPConn))
	if err != nil {
		return errResult(err)
	}
	return result{Backend: string(buf[:n]), Peer: peer}
}

// benchInterleaved times connects for each variant, batch by batch and
// variant by variant in rotating order, so that a change in machine load
// hits every variant alike. Before each batch the process moves itself
// into the variant's cgroup and this thread into its namespace: a socket
// belongs to the cgroup and namespace current at its creation.
func benchInterleaved(vs []variant, n, batch int) result {
	res := result{Batches: make(map[string][]int64), Connects: make(map[string][]int64)}
	nss := make([]netns.NsHandle, len(vs))
	sas := make([][]unix.Sockaddr, len(vs))
	for i, v := range vs {
		ns, err := netns.GetFromPath(v.Netns)
		if err != nil {
			return errResult(err)
		}
		defer ns.Close()
		nss[i] = ns
		for _, a := range v.Addrs {
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				return errResult(err)
			}
			sas[i] = append(sas[i], &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())})
		}
	}
	pid := []byte(fmt.Sprint(os.Getpid()))
	linger := unix.Linger{Onoff: 1, Linger: 0}
	for round := 0; round*batch < n; round++ {
		for j := range vs {
			i := (round + j) % len(vs)
			v := vs[i]
			if err := os.WriteFile(v.Cgroup+"/cgroup.procs", pid, 0); err != nil {
				return errResult(fmt.Errorf("join cgroup %s: %w", v.Cgroup, err))
			}
			if err := netns.Set(nss[i]); err != nil {
				return errResult(err)
			}
			var inConnect time.Duration
			start := time.Now()
			for k := range batch {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return errResult(err)
				}
				sa := sas[i][(round*batch+k)%len(sas[i])]
				t0 := time.Now()
				err = unix.Connect(fd, sa)
				inConnect += time.Since(t0)
				if err != nil {
					unix.Close(fd)
					return errResult(fmt.Errorf("%s: connect to %v: %w", v.Name, v.Addrs[(round*batch+k)%len(sas[i])], err))
				}
				// RST on close: no TIME_WAIT piles up over the run.
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &linger)
				unix.Close(fd)
			}
			res.Batches[v.Name] = append(res.Batches[v.Name], time.Since(start).Nanoseconds())
			res.Connects[v.Name] = append(res.Connects[v.Name], inConnect.Nanoseconds())
		}
	}
	return res
}

// runClientIn starts the client in cgroup (or in none when cgroup is "")
// and namespace, and returns one result per operation.
func runClientIn(t testing.TB, cgroup, nsPath string, ops []op) []result {
	t.Helper()
	spec, err := json.Marshal(clientSpec{Netns: nsPath, Ops: ops})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), clientEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	if cgroup != "" {
		dir, err := os.Open(cgroup)
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	var res []result
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	if len(res) != len(ops) {
		t.Fatalf("client returned %d results for %d operations", len(res), len(ops))
	}
	return res
}
