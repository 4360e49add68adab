package tunnelpolicy

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	"github.com/isthmus-mesh/isthmus/datapath/internal/bpftest"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

const (
	tcActUnspec = ^uint32(0) // TC_ACT_UNSPEC (-1): pass to the next program
	tcActShot   = 2
)

// Identities in a two-cluster mesh: cluster 1 is local.
var (
	idLocal   = protocol.ComposeIdentity(1, 300, 255)
	idLocal2  = protocol.ComposeIdentity(1, 301, 255)
	idRemote  = protocol.ComposeIdentity(2, 400, 255)
	idRemote2 = protocol.ComposeIdentity(2, 401, 255)
)

const (
	localIP   = "10.1.0.5"
	local2IP  = "10.1.0.6"
	remoteIP  = "10.2.0.7"
	remote2IP = "10.2.0.8"
	unknownIP = "192.0.2.1"
	local6IP  = "fd00:1::5"
	remote6IP = "fd00:2::7"
)

func smallMaps(root string) maps.Config {
	return maps.Config{
		Root: root, IPCacheMaxEntries: 1024, FrontendMaxEntries: 16, SlotMaxEntries: 16,
		BackendMaxEntries: 16, RevNATMaxEntries: 16, PolicyMaxEntries: 256,
		EnforcementMaxEntries: 64, CTMaxEntries: 1024, FlowRingBytes: 64 * 1024,
	}
}

type fixture struct {
	m     *maps.Maps
	e     *Enforcer
	flows *FlowReader
}

func newFixture(t testing.TB, cfg Config) *fixture {
	t.Helper()
	m, err := maps.Open(smallMaps(bpffstest.PinRoot(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	e, err := New(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	fr, err := NewFlowReader(m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fr.Close() })
	f := &fixture{m: m, e: e, flows: fr}

	for ip, id := range map[string]protocol.NumericIdentity{
		localIP + "/32": idLocal, local2IP + "/32": idLocal2, local6IP + "/128": idLocal,
		remoteIP + "/32": idRemote, remote2IP + "/32": idRemote2, remote6IP + "/128": idRemote,
	} {
		p := netip.MustParsePrefix(ip)
		if err := m.IPCache.Upsert(p, maps.IPCacheEntry{Identity: id, ClusterID: uint16(id.ClusterID(255))}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fixture) run(t testing.TB, prog *ebpf.Program, data []byte) uint32 {
	t.Helper()
	ret, err := prog.Run(&ebpf.RunOptions{Data: data})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret
}

func (f *fixture) ingress(t testing.TB, p pktSpec) uint32 { return f.run(t, f.e.Ingress(), frame(p)) }
func (f *fixture) egress(t testing.TB, p pktSpec) uint32  { return f.run(t, f.e.Egress(), frame(p)) }

func (f *fixture) allow(t testing.TB, k maps.PolicyEntryKey, rule uint32) {
	t.Helper()
	if err := f.m.Policy.Upsert(k, maps.PolicyEntry{Verdict: maps.Allow, RuleID: rule}); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) enforce(t testing.TB, id protocol.NumericIdentity, en maps.Enforced) {
	t.Helper()
	if err := f.m.Enforcement.Set(id, en); err != nil {
		t.Fatal(err)
	}
}

// event returns the next flow event, failing if none arrives in time.
func (f *fixture) event(t testing.TB) FlowEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, err := f.flows.Read(ctx)
	if err != nil {
		t.Fatalf("read flow event: %v", err)
	}
	return ev
}

func (f *fixture) counters(t testing.TB) map[Reason]Counter {
	t.Helper()
	c, err := ReadCounters(f.m)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func expect(t testing.TB, what string, got, want uint32) {
	t.Helper()
	name := map[uint32]string{tcActUnspec: "pass", tcActShot: "drop"}
	if got != want {
		t.Fatalf("%s: %s (%d), want %s", what, name[got], got, name[want])
	}
}

func TestFlowRecordMatchesBTF(t *testing.T) {
	spec, err := loadTunnel()
	if err != nil {
		t.Fatal(err)
	}
	var ev *btf.Struct
	if err := spec.Types.TypeByName("flow_event", &ev); err != nil {
		t.Fatal(err)
	}
	bpftest.CheckLayout(t, reflect.TypeFor[maps.FlowRecord](), ev)
}

func TestIngressPolicy(t *testing.T) {
	f := newFixture(t, Config{Ethernet: true})
	f.enforce(t, idLocal, maps.Enforced{Ingress: true})
	web := maps.PolicyEntryKey{Direction: maps.Ingress, LocalIdentity: idLocal, RemoteIdentity: idRemote, Port: 80, Protocol: maps.ProtoTCP}
	f.allow(t, web, 11)

	t.Run("allow", func(t *testing.T) {
		p := tcp(remoteIP+":40000", localIP+":80")
		expect(t, "allowed flow", f.ingress(t, p), tcActUnspec)
		ev := f.event(t)
		want := FlowEvent{
			Src: p.src, Dst: p.dst, Protocol: maps.ProtoTCP, Direction: maps.Ingress,
			Reason: ReasonAllowedPolicy, SrcIdentity: idRemote, DstIdentity: idLocal,
			SrcCluster: 2, DstCluster: 1, RuleID: 11, Length: uint32(len(frame(p))),
		}
		ev.Time, ev.Ifindex = time.Time{}, 0
		if ev != want {
			t.Fatalf("flow event\n got %+v\nwant %+v", ev, want)
		}
		// The next packet of the flow is established: no policy, no event.
		expect(t, "second packet", f.ingress(t, p), tcActUnspec)
		if c := f.counters(t); c[ReasonAllowedPolicy].Packets != 1 || c[ReasonEstablished].Packets != 1 {
			t.Fatalf("counters %v", c)
		}
	})

	t.Run("deny", func(t *testing.T) {
		p := tcp(remote2IP+":40001", localIP+":80")
		expect(t, "flow from an identity with no rule", f.ingress(t, p), tcActShot)
		ev := f.event(t)
		if !ev.Dropped || ev.Reason != ReasonNoMatch || ev.SrcIdentity != idRemote2 || ev.DstIdentity != idLocal {
			t.Fatalf("drop event %+v", ev)
		}
		// An explicit deny entry, and its rule ID in the event.
		if err := f.m.Policy.Upsert(maps.PolicyEntryKey{Direction: maps.Ingress, LocalIdentity: idLocal, RemoteIdentity: idRemote2},
			maps.PolicyEntry{Verdict: maps.Deny, RuleID: 12}); err != nil {
			t.Fatal(err)
		}
		expect(t, "explicitly denied flow", f.ingress(t, p), tcActShot)
		if ev := f.event(t); ev.Reason != ReasonPolicyDeny || ev.RuleID != 12 {
			t.Fatalf("deny event %+v", ev)
		}
		if c := f.counters(t); c[ReasonNoMatch].Packets != 1 || c[ReasonPolicyDeny].Packets != 1 {
			t.Fatalf("counters %v", c)
		}
	})

	t.Run("port mismatch", func(t *testing.T) {
		expect(t, "port 81", f.ingress(t, tcp(remoteIP+":40002", localIP+":81")), tcActShot)
		if ev := f.event(t); ev.Reason != ReasonNoMatch || ev.Dst.Port() != 81 {
			t.Fatalf("event %+v", ev)
		}
	})

	t.Run("protocol mismatch", func(t *testing.T) {
		expect(t, "UDP to the TCP port", f.ingress(t, udp(remoteIP+":40003", localIP+":80")), tcActShot)
		if ev := f.event(t); ev.Reason != ReasonNoMatch || ev.Protocol != maps.ProtoUDP {
			t.Fatalf("event %+v", ev)
		}
	})

	t.Run("unknown source is world", func(t *testing.T) {
		p := tcp(unknownIP+":40004", localIP+":8080")
		expect(t, "world without a rule", f.ingress(t, p), tcActShot)
		if ev := f.event(t); ev.SrcIdentity != protocol.IdentityWorld || ev.SrcCluster != 0 || ev.Reason != ReasonNoMatch {
			t.Fatalf("event %+v, want source identity world", ev)
		}
		f.allow(t, maps.PolicyEntryKey{Direction: maps.Ingress, LocalIdentity: idLocal, RemoteIdentity: protocol.IdentityWorld, Port: 8080, Protocol: maps.ProtoTCP}, 13)
		expect(t, "world with a rule", f.ingress(t, p), tcActUnspec)
		if ev := f.event(t); ev.SrcIdentity != protocol.IdentityWorld || ev.RuleID != 13 {
			t.Fatalf("event %+v", ev)
		}
	})

	t.Run("more specific entry wins", func(t *testing.T) {
		if err := f.m.Policy.Upsert(maps.PolicyEntryKey{Direction: maps.Ingress, LocalIdentity: idLocal, Protocol: maps.ProtoTCP},
			maps.PolicyEntry{Verdict: maps.Deny, RuleID: 14}); err != nil {
			t.Fatal(err)
		}
		expect(t, "TCP/22 from remote", f.ingress(t, tcp(remoteIP+":40005", localIP+":22")), tcActShot)
		if ev := f.event(t); ev.Reason != ReasonPolicyDeny || ev.RuleID != 14 {
			t.Fatalf("event %+v", ev)
		}
		expect(t, "TCP/80 from remote (specific allow)", f.ingress(t, tcp(remoteIP+":40006", localIP+":80")), tcActUnspec)
		if ev := f.event(t); ev.RuleID != 11 {
			t.Fatalf("event %+v", ev)
		}
	})
}

func TestReplyOfAllowedFlow(t *testing.T) {
	f := newFixture(t, Config{Ethernet: true})
	// Ingress is enforced with no rules: only replies may come in.
	f.enforce(t, idLocal, maps.Enforced{Ingress: true})
	out := tcp(localIP+":50000", remoteIP+":443")

	expect(t, "reply before any request", f.ingress(t, out.reply()), tcActShot)
	if ev := f.event(t); ev.Reason != ReasonNoMatch {
		t.Fatalf("event %+v", ev)
	}

	expect(t, "outgoing request (egress not enforced)", f.egress(t, out), tcActUnspec)
	if ev := f.event(t); ev.Reason != ReasonAllowedUnenforced || ev.Direction != maps.Egress ||
		ev.SrcIdentity != idLocal || ev.DstIdentity != idRemote {
		t.Fatalf("event %+v", ev)
	}
	expect(t, "reply", f.ingress(t, out.reply()), tcActUnspec)
	expect(t, "more of the request", f.egress(t, out), tcActUnspec)
	c := f.counters(t)
	if c[ReasonReply].Packets != 1 || c[ReasonEstablished].Packets != 1 {
		t.Fatalf("counters %v", c)
	}

	// ICMP echo over IPv6: the reply matches the request by identifier.
	ping := pktSpec{src: netip.MustParseAddrPort("[" + local6IP + "]:7"), dst: netip.MustParseAddrPort("[" + remote6IP + "]:0"), proto: maps.ProtoICMPv6, icmpType: 128}
	pong := pktSpec{src: netip.AddrPortFrom(ping.dst.Addr(), 7), dst: netip.AddrPortFrom(ping.src.Addr(), 0), proto: maps.ProtoICMPv6, icmpType: 129}
	expect(t, "echo request out", f.egress(t, ping), tcActUnspec)
	f.event(t)
	expect(t, "echo reply in", f.ingress(t, pong), tcActUnspec)
	if got := f.counters(t)[ReasonReply].Packets; got != 2 {
		t.Fatalf("replies counted %d, want 2", got)
	}
}

func TestDefaultDenyAndEgressPolicy(t *testing.T) {
	f := newFixture(t, Config{Ethernet: true})
	p := tcp(remoteIP+":40000", local2IP+":80")
	expect(t, "unselected endpoint, default allow", f.ingress(t, p), tcActUnspec)
	if ev := f.event(t); ev.Reason != ReasonAllowedUnenforced {
		t.Fatalf("event %+v", ev)
	}

	if _, err := f.m.Config.Update(func(s *maps.MeshSettings) { s.DefaultDeny = true }); err != nil {
		t.Fatal(err)
	}
	expect(t, "unselected endpoint, default deny", f.ingress(t, tcp(remoteIP+":40001", local2IP+":80")), tcActShot)
	if ev := f.event(t); ev.Reason != ReasonDefaultDeny {
		t.Fatalf("event %+v", ev)
	}

	// Egress rules: local2 may reach remote on UDP/53 only.
	f.enforce(t, idLocal2, maps.Enforced{Egress: true})
	f.allow(t, maps.PolicyEntryKey{Direction: maps.Egress, LocalIdentity: idLocal2, RemoteIdentity: idRemote, Port: 53, Protocol: maps.ProtoUDP}, 21)
	expect(t, "egress UDP/53", f.egress(t, udp(local2IP+":3333", remoteIP+":53")), tcActUnspec)
	if ev := f.event(t); ev.Reason != ReasonAllowedPolicy || ev.RuleID != 21 || ev.Direction != maps.Egress {
		t.Fatalf("event %+v", ev)
	}
	expect(t, "egress UDP/54", f.egress(t, udp(local2IP+":3333", remoteIP+":54")), tcActShot)
	f.event(t)
	// The DNS answer comes back despite default deny on ingress.
	expect(t, "answer", f.ingress(t, udp(remoteIP+":53", local2IP+":3333")), tcActUnspec)
}

func TestPolicyRevisionRechecksTrackedFlows(t *testing.T) {
	f := newFixture(t, Config{Ethernet: true})
	f.enforce(t, idLocal, maps.Enforced{Ingress: true})
	k := maps.PolicyEntryKey{Direction: maps.Ingress, LocalIdentity: idLocal, RemoteIdentity: idRemote, Port: 80, Protocol: maps.ProtoTCP}
	f.allow(t, k, 31)
	p := tcp(remoteIP+":40000", localIP+":80")
	expect(t, "first packet", f.ingress(t, p), tcActUnspec)
	f.event(t)

	// Removing the rule alone leaves the tracked flow alone...
	if err := f.m.Policy.Delete(k); err != nil {
		t.Fatal(err)
	}
	expect(t, "before the revision bump", f.ingress(t, p), tcActUnspec)
	// ...and bumping the revision makes its next packet be checked again.
	if _, err := f.m.Config.BumpPolicyRevision(); err != nil {
		t.Fatal(err)
	}
	expect(t, "after the revision bump", f.ingress(t, p), tcActShot)
	if ev := f.event(t); ev.Reason != ReasonNoMatch {
		t.Fatalf("event %+v", ev)
	}
	// A flow still allowed under the new revision keeps passing.
	f.allow(t, k, 32)
	if _, err := f.m.Config.BumpPolicyRevision(); err != nil {
		t.Fatal(err)
	}
	q := tcp(remoteIP+":40001", localIP+":80")
	expect(t, "new flow", f.ingress(t, q), tcActUnspec)
	f.event(t)
	if _, err := f.m.Config.BumpPolicyRevision(); err != nil {
		t.Fatal(err)
	}
	expect(t, "re-checked and still allowed", f.ingress(t, q), tcActUnspec)
	expect(t, "and established again", f.ingress(t, q), tcActUnspec)
	if c := f.counters(t); c[ReasonEstablished].Packets != 3 {
		t.Fatalf("established %d, want 3 (before bump, re-check, after)", c[ReasonEstablished].Packets)
	}
}

func TestOddPackets(t *testing.T) {
	f := newFixture(t, Config{Ethernet: true})
	f.enforce(t, idLocal, maps.Enforced{Ingress: true})

	expect(t, "ARP", f.run(t, f.e.Ingress(), ethernet(etherTypeARP, make([]byte, 28))), tcActUnspec)
	full := frame(tcp(remoteIP+":1", localIP+":80"))
	// BPF_PROG_TEST_RUN refuses frames whose IP header is cut short, so
	// cut the TCP header instead: the ports are missing.
	expect(t, "truncated TCP header", f.run(t, f.e.Ingress(), full[:14+20+2]), tcActShot)
	frag := tcp(remoteIP+":1", localIP+":80")
	frag.fragOff = 185 // offset 1480 bytes: no L4 header in this packet
	expect(t, "non-first fragment", f.ingress(t, frag), tcActUnspec)
	c := f.counters(t)
	if c[ReasonNotIP].Packets != 1 || c[ReasonMalformed].Packets != 1 || c[ReasonFragment].Packets != 1 {
		t.Fatalf("counters %v", c)
	}
}

// TestL3Device runs the programs built for an L3 device (WireGuard): the
// packet starts at the IP header. BPF_PROG_TEST_RUN still wants 14 bytes or
// more and parses them as Ethernet, but the program ignores that.
func TestL3Device(t *testing.T) {
	f := newFixture(t, Config{})
	f.enforce(t, idLocal, maps.Enforced{Ingress: true})
	f.allow(t, maps.PolicyEntryKey{Direction: maps.Ingress, LocalIdentity: idLocal, RemoteIdentity: idRemote, Port: 80, Protocol: maps.ProtoTCP}, 41)

	expect(t, "IPv4 allowed", f.run(t, f.e.Ingress(), ipPacket(tcp(remoteIP+":40000", localIP+":80"))), tcActUnspec)
	if ev := f.event(t); ev.RuleID != 41 || ev.SrcIdentity != idRemote {
		t.Fatalf("event %+v", ev)
	}
	expect(t, "IPv4 denied", f.run(t, f.e.Ingress(), ipPacket(tcp(remoteIP+":40000", localIP+":81"))), tcActShot)
	f.event(t)
	p6 := pktSpec{src: netip.MustParseAddrPort("[" + remote6IP + "]:40000"), dst: netip.MustParseAddrPort("[" + local6IP + "]:80"), proto: maps.ProtoTCP}
	expect(t, "IPv6 allowed", f.run(t, f.e.Ingress(), ipPacket(p6)), tcActUnspec)
	if ev := f.event(t); ev.Src != p6.src || ev.RuleID != 41 {
		t.Fatalf("event %+v", ev)
	}
}

func TestFlowEventsCanBeSilenced(t *testing.T) {
	f := newFixture(t, Config{Ethernet: true})
	f.enforce(t, idLocal, maps.Enforced{Ingress: true})
	if _, err := f.m.Config.Update(func(s *maps.MeshSettings) { s.NoNewFlowEvents = true }); err != nil {
		t.Fatal(err)
	}
	expect(t, "allowed-unenforced", f.ingress(t, tcp(remoteIP+":1", local2IP+":80")), tcActUnspec)
	expect(t, "drop", f.ingress(t, tcp(remoteIP+":2", localIP+":80")), tcActShot)
	// Only the drop is reported.
	if ev := f.event(t); !ev.Dropped || ev.Src.Port() != 2 {
		t.Fatalf("first event %+v, want the drop", ev)
	}
	// And a cancelled context ends a blocked Read.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.flows.Read(ctx); err != context.Canceled {
		t.Fatalf("Read with a cancelled context: %v", err)
	}
}

func TestFlowReaderCloseInterruptsRead(t *testing.T) {
	f := newFixture(t, Config{Ethernet: true})
	errc := make(chan error, 1)
	go func() {
		_, err := f.flows.Read(context.Background())
		errc <- err
	}()
	// Whether Close lands before or during the Read, Read must end.
	if err := f.flows.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err != ErrClosed {
			t.Fatalf("Read after Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
}
