package socklb

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	"github.com/isthmus-mesh/isthmus/datapath/internal/bpftest"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/netnstest"
)

// BenchmarkConnect measures connect() latency (TCP handshake over
// loopback, then close with RST) side by side:
//
//   - no-lb: straight to a backend address, no load balancing at all;
//   - socklb: to a global service VIP, rewritten by the socket LB;
//   - iptables: to a ClusterIP DNATed by rules written the way kube-proxy
//     writes them (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* DNAT, loaded
//     with iptables-restore in a private netns);
//   - socklb-beside-iptables: the socket LB on a node that also carries the
//     kube-proxy rules, whose first packet still walks KUBE-SERVICES.
//
// Each connect comes from a child process (the socket LB acts on its
// cgroup), which times its own loop over 64 services spread across the
// whole table. ns/connect is the time spent in the connect() calls alone
// (what the target is about: the SYN's trip through the hooks or
// the nat table, and the handshake); ns/cycle adds the socket() and the
// close() with RST around each one.
//
// ISTHMUS_BENCH_SERVICES (default 10,10000,100000) picks the service
// counts; ISTHMUS_BENCH_IPTABLES_RESTORE (default iptables-restore) the
// restore binary. Loading 100k services with the nf_tables backend takes
// minutes on a small machine.
func BenchmarkConnect(b *testing.B) {
	counts := []int{10, 10_000, 100_000}
	if env := os.Getenv("ISTHMUS_BENCH_SERVICES"); env != "" {
		counts = nil
		for _, f := range strings.Split(env, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("ISTHMUS_BENCH_SERVICES: %v", err)
			}
			counts = append(counts, n)
		}
	}
	restore := os.Getenv("ISTHMUS_BENCH_IPTABLES_RESTORE")
	if restore == "" {
		restore = "iptables-restore"
	}
	if _, err := exec.LookPath(restore); err != nil {
		bpffstest.PinRoot(b) // privileged check first, for a clearer skip
		b.Skipf("%s not installed", restore)
	}
	maxSvc := 0
	for _, n := range counts {
		maxSvc = max(maxSvc, n)
	}

	root := bpffstest.PinRoot(b)
	m, err := maps.Open(maps.Config{
		Root: root, IPCacheMaxEntries: 64, PolicyMaxEntries: 64, EnforcementMaxEntries: 64, CTMaxEntries: 64,
		FrontendMaxEntries: uint32(maxSvc + 64), SlotMaxEntries: uint32(maxSvc + 64), BackendMaxEntries: 1024,
		RevNATMaxEntries: 1 << 18, FlowRingBytes: 16 * 1024,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	lb, err := New(m)
	if err != nil {
		b.Fatal(err)
	}
	cg := bpftest.Cgroup(b)
	if err := lb.Attach(cg); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lb.Detach(); lb.Close() })

	// Baseline connects run in a cgroup with nothing attached, so that
	// every variant pays the same cgroup accounting.
	cgPlain := bpftest.Cgroup(b)
	plain := newBenchNet(b, nil)
	// The same backend ports in both namespaces, so the socket LB's
	// services are valid in either.
	ipt := newBenchNet(b, plain.backends)

	for _, n := range counts {
		if _, err := m.Services.Reconcile(plain.services(n)); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := ipt.loadKubeProxyRules(restore, n); err != nil {
			b.Fatal(err)
		}
		b.Logf("%s: %d services loaded in %v", restore, n, time.Since(start).Round(time.Millisecond))
		targets := spread(n, 64)
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			runConnects(b, []variant{
				{Name: "no-lb", Netns: plain.ns.Path(), Cgroup: cgPlain, Addrs: plain.backendStrings()},
				// The hooks run for every connect in the cgroup: their
				// cost for an address that is not a service.
				{Name: "no-lb-hooked", Netns: plain.ns.Path(), Cgroup: cg, Addrs: plain.backendStrings()},
				{Name: "socklb", Netns: plain.ns.Path(), Cgroup: cg, Addrs: targets},
				{Name: "iptables", Netns: ipt.ns.Path(), Cgroup: cgPlain, Addrs: targets},
				{Name: "socklb-beside-iptables", Netns: ipt.ns.Path(), Cgroup: cg, Addrs: targets},
			})
		})
	}
}

// connectBatch is how many connects one timed batch holds.
const connectBatch = 100

func runConnects(b *testing.B, vs []variant) {
	res := runClientIn(b, "", "", []op{{Kind: "bench", N: b.N, Batch: connectBatch, Variants: vs}})
	if res[0].Err != "" {
		b.Fatal(res[0].Err)
	}
	connect := medianPerConnect(res[0].Connects)
	cycle := medianPerConnect(res[0].Batches)
	for _, v := range vs {
		b.ReportMetric(connect[v.Name], v.Name+"-ns/connect")
		b.ReportMetric(cycle[v.Name], v.Name+"-ns/cycle")
	}
	b.ReportMetric(connect["iptables"]/connect["socklb"], "iptables/socklb")
	b.ReportMetric(connect["socklb"]/connect["no-lb"], "socklb/no-lb")
	b.ReportMetric(cycle["iptables"]/cycle["socklb"], "iptables/socklb-cycle")
}

// medianPerConnect returns, per variant, the median batch's time divided
// by the batch size.
func medianPerConnect(batches map[string][]int64) map[string]float64 {
	med := make(map[string]float64, len(batches))
	for name, bs := range batches {
		bs = slices.Clone(bs)
		slices.Sort(bs)
		med[name] = float64(bs[len(bs)/2]) / connectBatch
	}
	return med
}

// vip returns service i's ClusterIP, in 10.96.0.0/12.
func vip(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)})
}

// spread picks k services evenly across n, as host:port strings.
func spread(n, k int) []string {
	k = min(k, n)
	out := make([]string, k)
	for j := range k {
		out[j] = netip.AddrPortFrom(vip(j*n/k+n/(2*k)), 80).String()
	}
	return out
}

const benchBackends = 16

// benchNet is a network namespace with backends listening on 10.244.0.1
// and a route for the service range, as on a node.
type benchNet struct {
	ns       *netnstest.Namespace
	backends []netip.AddrPort
}

// newBenchNet listens on the ports of like, or on fresh ones when like is nil.
func newBenchNet(b *testing.B, like []netip.AddrPort) *benchNet {
	n := &benchNet{ns: netnstest.NewNamespace(b, "isthmus-bench")}
	// No dummy driver on every kernel: loopback carries both the backend
	// address and the route that makes ClusterIPs routable (DNAT in OUTPUT
	// happens after the first route lookup).
	h := n.ns.Netlink(b)
	lo, err := h.LinkByName("lo")
	if err != nil {
		b.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("10.244.0.1/16")
	if err := h.AddrAdd(lo, addr); err != nil {
		b.Fatal(err)
	}
	_, svcRange, _ := net.ParseCIDR("10.96.0.0/12")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: svcRange}); err != nil {
		b.Fatal(err)
	}
	for i := range benchBackends {
		port := 0
		if like != nil {
			port = int(like[i].Port())
		}
		ln, err := n.ns.Listen("tcp4", fmt.Sprintf("10.244.0.1:%d", port))
		if err != nil {
			b.Fatal(err)
		}
		n.backends = append(n.backends, ln.Addr().(*net.TCPAddr).AddrPort())
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		b.Cleanup(func() { ln.Close(); <-done })
	}
	return n
}

func (n *benchNet) backendStrings() []string {
	out := make([]string, len(n.backends))
	for i, be := range n.backends {
		out[i] = be.String()
	}
	return out
}

func (n *benchNet) services(count int) []maps.Service {
	svcs := make([]maps.Service, count)
	for i := range svcs {
		be := n.backends[i%len(n.backends)]
		svcs[i] = maps.Service{
			Frontend: maps.Frontend{Addr: vip(i), Port: 80, Protocol: maps.ProtoTCP},
			Backends: []maps.Backend{{Addr: be.Addr(), Port: be.Port(), ClusterID: 1, Local: true}},
		}
	}
	return svcs
}

// loadKubeProxyRules replaces the nat table with count services written as
// kube-proxy's iptables mode writes them (one endpoint each).
func (n *benchNet) loadKubeProxyRules(restore string, count int) error {
	var chains, rules bytes.Buffer
	chains.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	chains.WriteString(":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n")
	rules.WriteString("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n")
	rules.WriteString("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n")
	rules.WriteString("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n")
	rules.WriteString("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n")
	rules.WriteString("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n")
	rules.WriteString("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n")
	rules.WriteString("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n")
	for i := range count {
		name := fmt.Sprintf("bench/svc-%d:http", i)
		sum := sha256.Sum256([]byte(name))
		h := strings.ToUpper(hex.EncodeToString(sum[:]))
		svc, sep := "KUBE-SVC-"+h[:16], "KUBE-SEP-"+h[16:32]
		ip := vip(i)
		be := n.backends[i%len(n.backends)]
		fmt.Fprintf(&chains, ":%s - [0:0]\n:%s - [0:0]\n", svc, sep)
		fmt.Fprintf(&rules, "-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment \"%s cluster IP\" -m tcp --dport 80 -j %s\n", ip, name, svc)
		fmt.Fprintf(&rules, "-A %s ! -s 10.244.0.0/16 -d %s/32 -p tcp -m comment --comment \"%s cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n", svc, ip, name)
		fmt.Fprintf(&rules, "-A %s -m comment --comment \"%s -> %s\" -j %s\n", svc, name, be, sep)
		fmt.Fprintf(&rules, "-A %s -s %s/32 -m comment --comment \"%s\" -j KUBE-MARK-MASQ\n", sep, be.Addr(), name)
		fmt.Fprintf(&rules, "-A %s -p tcp -m comment --comment \"%s\" -m tcp -j DNAT --to-destination %s\n", sep, name, be)
	}
	rules.WriteString("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n")
	rules.WriteString("COMMIT\n")

	var out bytes.Buffer
	cmd := exec.Command(restore)
	cmd.Stdin = io.MultiReader(&chains, &rules)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := n.ns.Start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return fmt.Errorf("%s: %v: %s", restore, err, out.String())
	}
	return nil
}
