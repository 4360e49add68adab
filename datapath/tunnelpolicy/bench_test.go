package tunnelpolicy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/isthmus-mesh/isthmus/datapath/bpffs/bpffstest"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// BenchmarkPolicyProgram measures the per-packet cost of the ingress
// program through BPF_PROG_TEST_RUN (the kernel times b.N runs on one
// packet) with the ipcache holding 1, 10k and 1M entries, side by side:
//
//   - established: a packet of a tracked flow, the common case;
//   - reply: the reply of a flow opened in the other direction;
//   - new-flow: a new flow judged by policy (both ipcache lookups, the
//     enforcement lookup and all six policy lookups, then a drop, so that
//     every run is new; drop events off).
//
// The single-entry ipcache is 10.0.0.0/8; larger ones add random /32s from
// that range, the flow's two ends among them, as pod IPs would be.
// ISTHMUS_BENCH_IPCACHE (default 1,10000,1000000) picks the sizes.
func BenchmarkPolicyProgram(b *testing.B) {
	sizes := []int{1, 10_000, 1_000_000}
	if env := os.Getenv("ISTHMUS_BENCH_IPCACHE"); env != "" {
		sizes = nil
		for _, f := range strings.Split(env, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("ISTHMUS_BENCH_IPCACHE: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	largest := 0
	for _, n := range sizes {
		largest = max(largest, n)
	}

	cfg := smallMaps(bpffstest.PinRoot(b))
	cfg.IPCacheMaxEntries = uint32(largest + 1024)
	m, err := maps.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	e, err := New(m, Config{Ethernet: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })

	id := protocol.ComposeIdentity(1, 500, 255)
	local, remote := netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("10.200.3.7")
	if err := m.Enforcement.Set(id, maps.Enforced{Ingress: true}); err != nil {
		b.Fatal(err)
	}
	if err := m.Policy.Upsert(maps.PolicyEntryKey{Direction: maps.Ingress, LocalIdentity: id, RemoteIdentity: id, Port: 80, Protocol: maps.ProtoTCP},
		maps.PolicyEntry{Verdict: maps.Allow, RuleID: 1}); err != nil {
		b.Fatal(err)
	}
	if _, err := m.Config.Update(func(s *maps.MeshSettings) { s.NoDropEvents, s.NoNewFlowEvents = true, true }); err != nil {
		b.Fatal(err)
	}

	established := frame(tcp(remote.String()+":40000", local.String()+":80"))
	out := tcp(local.String()+":50000", remote.String()+":443")
	reply := frame(out.reply())
	denied := frame(tcp(remote.String()+":40001", local.String()+":81"))

	filler := newFiller(b, m, id, local, remote)
	for _, n := range sizes {
		filler.growTo(b, n)
		// Track the two flows anew for each size (the tracker is not
		// what is measured, but it must hold them).
		mustRun(b, e.Ingress(), established, tcActUnspec)
		mustRun(b, e.Egress(), frame(out), tcActUnspec)
		for _, c := range []struct {
			name string
			data []byte
			want uint32
		}{
			{"established", established, tcActUnspec},
			{"reply", reply, tcActUnspec},
			{"new-flow", denied, tcActShot},
		} {
			b.Run(fmt.Sprintf("ipcache=%d/%s", n, c.name), func(b *testing.B) {
				ret, per, err := e.Ingress().Benchmark(c.data, b.N, b.ResetTimer)
				if err != nil {
					b.Fatal(err)
				}
				if ret != c.want {
					b.Fatalf("verdict %d, want %d", ret, c.want)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
			})
		}
	}
}

func mustRun(b *testing.B, p *ebpf.Program, data []byte, want uint32) {
	b.Helper()
	ret, err := p.Run(&ebpf.RunOptions{Data: data})
	if err != nil || ret != want {
		b.Fatalf("run: verdict %d (%v), want %d", ret, err, want)
	}
}

// filler grows the ipcache with random /32 entries in 10.0.0.0/8.
type filler struct {
	m     *maps.Maps
	id    protocol.NumericIdentity
	rnd   *rand.Rand
	seen  map[netip.Addr]bool
	count int
}

func newFiller(b *testing.B, m *maps.Maps, id protocol.NumericIdentity, ends ...netip.Addr) *filler {
	f := &filler{m: m, id: id, rnd: rand.New(rand.NewPCG(1, 2)), seen: map[netip.Addr]bool{}}
	// One entry: the /8 covers both ends.
	if err := m.IPCache.Upsert(netip.MustParsePrefix("10.0.0.0/8"), maps.IPCacheEntry{Identity: id, ClusterID: 1}); err != nil {
		b.Fatal(err)
	}
	f.count = 1
	for _, a := range ends {
		f.seen[a] = true
	}
	return f
}

func (f *filler) growTo(b *testing.B, n int) {
	if n <= f.count {
		return
	}
	var keys []maps.IPCacheKey
	var vals []maps.IPCacheValue
	add := func(a netip.Addr) {
		k, err := maps.IPCacheKeyOf(netip.PrefixFrom(a, 32))
		if err != nil {
			b.Fatal(err)
		}
		keys = append(keys, k)
		vals = append(vals, maps.IPCacheValue{Identity: uint32(f.id), ClusterID: 1})
	}
	if f.count == 1 {
		// From here on, the flow's ends have /32s of their own.
		for a := range f.seen {
			add(a)
		}
	}
	for f.count+len(keys) < n {
		a := netip.AddrFrom4([4]byte{10, byte(f.rnd.IntN(256)), byte(f.rnd.IntN(256)), byte(f.rnd.IntN(256))})
		if f.seen[a] {
			continue
		}
		f.seen[a] = true
		add(a)
	}
	for start := 0; start < len(keys); start += 1 << 16 {
		end := min(start+1<<16, len(keys))
		// /32s: the host half of the ipcache, as IPCache.Upsert would put them.
		if _, err := f.m.IPCache.HostsMap().BatchUpdate(keys[start:end], vals[start:end], nil); err != nil {
			b.Fatalf("fill ipcache: %v", err)
		}
	}
	f.count += len(keys)
}
