package socklb

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	"github.com/isthmus-mesh/isthmus/datapath/internal/bpftest"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/netnstest"
)

type fixture struct {
	m      *maps.Maps
	lb     *LoadBalancer
	cgroup string
	ns     *netnstest.Namespace
}

func smallMaps(root string) maps.Config {
	return maps.Config{
		Root: root, IPCacheMaxEntries: 64, FrontendMaxEntries: 64, SlotMaxEntries: 256,
		BackendMaxEntries: 64, RevNATMaxEntries: 256, PolicyMaxEntries: 64,
		EnforcementMaxEntries: 64, CTMaxEntries: 64, FlowRingBytes: 16 * 1024,
	}
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := bpffstest.PinRoot(t)
	cg := bpftest.Cgroup(t)
	m, err := maps.Open(smallMaps(root))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	lb, err := New(m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lb.Detach(); err != nil {
			t.Error(err)
		}
		lb.Close()
	})
	if err := lb.Attach(cg); err != nil {
		t.Fatal(err)
	}
	return &fixture{m: m, lb: lb, cgroup: cg, ns: netnstest.NewNamespace(t, "isthmus-socklb")}
}

// tcpBackend starts a TCP server in the test namespace that greets each
// connection with its name.
func (f *fixture) tcpBackend(t *testing.T, name, host string) netip.AddrPort {
	t.Helper()
	ln, err := f.ns.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(name + "\n"))
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// udpBackend starts a UDP server in the test namespace that answers every
// datagram with its name.
func (f *fixture) udpBackend(t *testing.T, name, host string) netip.AddrPort {
	t.Helper()
	var pc net.PacketConn
	if err := f.ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", net.JoinHostPort(host, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (f *fixture) upsert(t *testing.T, svc maps.Service) {
	t.Helper()
	if err := f.m.Services.Upsert(svc); err != nil {
		t.Fatal(err)
	}
}

func backend(ap netip.AddrPort, cluster uint16, local bool) maps.Backend {
	return maps.Backend{Addr: ap.Addr(), Port: ap.Port(), ClusterID: cluster, Local: local}
}

func repeat(kind, addr string, n int) []op {
	ops := make([]op, n)
	for i := range ops {
		ops[i] = op{Kind: kind, Addr: addr}
	}
	return ops
}

// seen runs the operations and returns how often each backend answered,
// failing on any error or on a peer other than wantPeer.
func (f *fixture) seen(t *testing.T, ops []op, wantPeer string) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for i, r := range runClientIn(t, f.cgroup, f.ns.Path(), ops) {
		if r.Err != "" {
			t.Fatalf("%s %s: %s", ops[i].Kind, ops[i].Addr, r.Err)
		}
		if r.Peer != wantPeer {
			t.Fatalf("%s %s: peer %s, want %s", ops[i].Kind, ops[i].Addr, r.Peer, wantPeer)
		}
		counts[r.Backend]++
	}
	return counts
}

func only(t *testing.T, counts map[string]int, allowed ...string) {
	t.Helper()
	for name := range counts {
		found := false
		for _, a := range allowed {
			found = found || a == name
		}
		if !found {
			t.Fatalf("backend %s answered, want only %v (all: %v)", name, allowed, counts)
		}
	}
}

func all(t *testing.T, counts map[string]int, want ...string) {
	t.Helper()
	only(t, counts, want...)
	for _, w := range want {
		if counts[w] == 0 {
			t.Fatalf("backend %s never chosen (counts %v)", w, counts)
		}
	}
}

func TestAffinity(t *testing.T) {
	f := newFixture(t)
	l1, l2 := f.tcpBackend(t, "local-1", "127.0.0.1"), f.tcpBackend(t, "local-2", "127.0.0.1")
	r1, r2 := f.tcpBackend(t, "remote-1", "127.0.0.1"), f.tcpBackend(t, "remote-2", "127.0.0.1")
	bes := []maps.Backend{backend(l1, 1, true), backend(l2, 1, true), backend(r1, 2, false), backend(r2, 2, false)}
	const vip = "10.96.0.10:80"
	svc := maps.Service{Frontend: maps.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: maps.ProtoTCP}}

	// 40 connects miss a given one of two equally likely backends with
	// probability 2^-40, and one of four in 60 with 4*(3/4)^60 < 1e-7.
	t.Run("local", func(t *testing.T) {
		svc.Affinity, svc.Backends = maps.AffinityLocal, bes
		f.upsert(t, svc)
		all(t, f.seen(t, repeat("tcp", vip, 40), vip), "local-1", "local-2")
		// Without local backends, remote ones take over.
		svc.Backends = bes[2:]
		f.upsert(t, svc)
		all(t, f.seen(t, repeat("tcp", vip, 40), vip), "remote-1", "remote-2")
	})
	t.Run("remote", func(t *testing.T) {
		svc.Affinity, svc.Backends = maps.AffinityRemote, bes
		f.upsert(t, svc)
		all(t, f.seen(t, repeat("tcp", vip, 40), vip), "remote-1", "remote-2")
		svc.Backends = bes[:2]
		f.upsert(t, svc)
		all(t, f.seen(t, repeat("tcp", vip, 40), vip), "local-1", "local-2")
	})
	t.Run("none", func(t *testing.T) {
		svc.Affinity, svc.Backends = maps.AffinityNone, bes
		f.upsert(t, svc)
		all(t, f.seen(t, repeat("tcp", vip, 60), vip), "local-1", "local-2", "remote-1", "remote-2")
	})
}

func TestBackendsAddedAndRemoved(t *testing.T) {
	f := newFixture(t)
	a, b := f.tcpBackend(t, "a", "127.0.0.1"), f.tcpBackend(t, "b", "127.0.0.1")
	const vip = "10.96.0.20:8080"
	svc := maps.Service{Frontend: maps.Frontend{Addr: netip.MustParseAddr("10.96.0.20"), Port: 8080, Protocol: maps.ProtoTCP}}

	svc.Backends = []maps.Backend{backend(a, 2, false)}
	f.upsert(t, svc)
	all(t, f.seen(t, repeat("tcp", vip, 10), vip), "a")

	svc.Backends = append(svc.Backends, backend(b, 2, false))
	f.upsert(t, svc)
	all(t, f.seen(t, repeat("tcp", vip, 40), vip), "a", "b")

	svc.Backends = []maps.Backend{backend(b, 2, false)}
	f.upsert(t, svc)
	all(t, f.seen(t, repeat("tcp", vip, 20), vip), "b")

	// A full reconcile that drops the service stops the rewrite.
	if _, err := f.m.Services.Reconcile(nil); err != nil {
		t.Fatal(err)
	}
	res := runClientIn(t, f.cgroup, f.ns.Path(), []op{{Kind: "tcp", Addr: vip}})
	if !strings.Contains(res[0].Err, "network is unreachable") {
		t.Fatalf("connect after the service went away: %+v, want unreachable (no rewrite)", res[0])
	}
}

func TestUDPReplyAddress(t *testing.T) {
	f := newFixture(t)
	b4 := f.udpBackend(t, "udp-v4", "127.0.0.1")
	b6 := f.udpBackend(t, "udp-v6", "::1")
	f.upsert(t, maps.Service{
		Frontend: maps.Frontend{Addr: netip.MustParseAddr("10.96.0.53"), Port: 53, Protocol: maps.ProtoUDP},
		Backends: []maps.Backend{backend(b4, 2, false)},
	})
	f.upsert(t, maps.Service{
		Frontend: maps.Frontend{Addr: netip.MustParseAddr("fd00:96::53"), Port: 53, Protocol: maps.ProtoUDP},
		Backends: []maps.Backend{backend(b6, 2, false)},
	})
	for _, tc := range []struct{ kind, vip, backend string }{
		{"udp", "10.96.0.53:53", "udp-v4"},
		{"udpconnected", "10.96.0.53:53", "udp-v4"},
		{"udp", "[fd00:96::53]:53", "udp-v6"},
		{"udpconnected", "[fd00:96::53]:53", "udp-v6"},
	} {
		t.Run(tc.kind+" "+tc.vip, func(t *testing.T) {
			// The reply comes from the backend; the application must see
			// it come from the service address.
			all(t, f.seen(t, repeat(tc.kind, tc.vip, 3), tc.vip), tc.backend)
		})
	}
}

func TestGetpeername(t *testing.T) {
	f := newFixture(t)
	b4 := f.tcpBackend(t, "tcp-v4", "127.0.0.1")
	b6 := f.tcpBackend(t, "tcp-v6", "::1")
	f.upsert(t, maps.Service{
		Frontend: maps.Frontend{Addr: netip.MustParseAddr("10.96.1.1"), Port: 443, Protocol: maps.ProtoTCP},
		Backends: []maps.Backend{backend(b4, 1, true)},
	})
	f.upsert(t, maps.Service{
		Frontend: maps.Frontend{Addr: netip.MustParseAddr("fd00:96::1"), Port: 443, Protocol: maps.ProtoTCP},
		Backends: []maps.Backend{backend(b6, 1, true)},
	})
	all(t, f.seen(t, repeat("tcp", "10.96.1.1:443", 2), "10.96.1.1:443"), "tcp-v4")
	all(t, f.seen(t, repeat("tcp", "[fd00:96::1]:443", 2), "[fd00:96::1]:443"), "tcp-v6")
	// A dual-stack socket connecting to the IPv4-mapped service address
	// reaches the IPv4 backend and sees the mapped service address.
	all(t, f.seen(t, repeat("tcp6mapped", "10.96.1.1:443", 2), "[::ffff:10.96.1.1]:443"), "tcp-v4")
}

func TestNoGlobalServiceNoRewrite(t *testing.T) {
	f := newFixture(t)
	plain := f.tcpBackend(t, "plain", "127.0.0.1")
	other := f.tcpBackend(t, "other", "127.0.0.1")
	f.upsert(t, maps.Service{
		Frontend: maps.Frontend{Addr: netip.MustParseAddr("10.96.2.1"), Port: 80, Protocol: maps.ProtoTCP},
		Backends: []maps.Backend{backend(other, 1, true)},
	})
	res := runClientIn(t, f.cgroup, f.ns.Path(), []op{
		{Kind: "tcp", Addr: plain.String()}, // not a service: reaches its own address
		{Kind: "tcp", Addr: "10.96.2.1:81"}, // service address, other port
		{Kind: "udp", Addr: "10.96.2.1:80"}, // service address, other protocol
		{Kind: "tcp", Addr: "10.96.2.1:80"}, // the service itself
	})
	if res[0].Err != "" || res[0].Backend != "plain" || res[0].Peer != plain.String() {
		t.Errorf("plain connect: %+v, want plain at %s", res[0], plain)
	}
	for _, r := range res[1:3] {
		if !strings.Contains(r.Err, "network is unreachable") {
			t.Errorf("non-service port/protocol: %+v, want unreachable (no rewrite)", r)
		}
	}
	if res[3].Backend != "other" {
		t.Errorf("service connect: %+v", res[3])
	}

	// A process outside the cgroup is not load balanced at all.
	out := runClientIn(t, "", f.ns.Path(), []op{{Kind: "tcp", Addr: "10.96.2.1:80"}})
	if !strings.Contains(out[0].Err, "network is unreachable") {
		t.Errorf("connect from outside the cgroup: %+v, want unreachable", out[0])
	}
}

// TestAttachSurvivesRestart checks the agent-restart path: attachments stay
// after Close, a new LoadBalancer takes the pinned links over (same links,
// new programs), and Detach removes them.
func TestAttachSurvivesRestart(t *testing.T) {
	f := newFixture(t)
	b := f.tcpBackend(t, "b", "127.0.0.1")
	f.upsert(t, maps.Service{
		Frontend: maps.Frontend{Addr: netip.MustParseAddr("10.96.3.1"), Port: 80, Protocol: maps.ProtoTCP},
		Backends: []maps.Backend{backend(b, 1, true)},
	})
	linkPath := filepath.Join(f.m.Root(), LinkDir, "socklb_connect4")
	before := pinnedLinkInfo(t, linkPath)

	// The agent exits: handles closed, nothing detached.
	if err := f.lb.Close(); err != nil {
		t.Fatal(err)
	}
	all(t, f.seen(t, repeat("tcp", "10.96.3.1:80", 3), "10.96.3.1:80"), "b")

	// The agent restarts.
	lb2, err := New(f.m)
	if err != nil {
		t.Fatal(err)
	}
	defer lb2.Close()
	if err := lb2.Attach(f.cgroup); err != nil {
		t.Fatal(err)
	}
	after := pinnedLinkInfo(t, linkPath)
	if after.ID != before.ID {
		t.Errorf("link replaced (ID %d -> %d), want the pinned link reused", before.ID, after.ID)
	}
	if after.Program == before.Program {
		t.Errorf("link still runs program %d, want the new one", before.Program)
	}
	all(t, f.seen(t, repeat("tcp", "10.96.3.1:80", 3), "10.96.3.1:80"), "b")

	// Attaching to another cgroup moves the hooks there.
	cg2 := bpftest.Cgroup(t)
	if err := lb2.Attach(cg2); err != nil {
		t.Fatal(err)
	}
	if moved := pinnedLinkInfo(t, linkPath); moved.ID == after.ID {
		t.Error("link not replaced when the cgroup changed")
	}
	if r := runClientIn(t, f.cgroup, f.ns.Path(), []op{{Kind: "tcp", Addr: "10.96.3.1:80"}}); !strings.Contains(r[0].Err, "unreachable") {
		t.Errorf("old cgroup still load balanced: %+v", r[0])
	}
	if r := runClientIn(t, cg2, f.ns.Path(), []op{{Kind: "tcp", Addr: "10.96.3.1:80"}}); r[0].Backend != "b" {
		t.Errorf("new cgroup not load balanced: %+v", r[0])
	}

	if err := lb2.Detach(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(linkPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin left after Detach: %v", err)
	}
	if r := runClientIn(t, cg2, f.ns.Path(), []op{{Kind: "tcp", Addr: "10.96.3.1:80"}}); !strings.Contains(r[0].Err, "unreachable") {
		t.Errorf("still load balanced after Detach: %+v", r[0])
	}
}

func pinnedLinkInfo(t *testing.T, path string) *link.Info {
	t.Helper()
	l, err := link.LoadPinnedLink(path, nil)
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
