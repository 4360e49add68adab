package wireguard_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
	"github.com/isthmus-mesh/isthmus/internal/netnstest"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// iperfSeconds is the length of one measured iperf3 run; its first second
// (TCP slow start) is omitted from the result.
const iperfSeconds = 5

// BenchmarkPodToPodThroughput measures single-stream TCP throughput
// (iperf3) between pods on two nodes, side by side in one lab: through
// WireGuard (kernel or userspace, whichever New picks here), and over the
// same nodes and underlay routed plainly, without a tunnel. The result is
// the Gbit/s metric; ns/op is the length of a run.
func BenchmarkPodToPodThroughput(b *testing.B) {
	privileged.Require(b)
	requireTools(b, "iperf3")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	u := netnstest.NewUnderlay(b, netnstest.UnderlayConfig{Prefix: netip.MustParsePrefix("192.168.88.0/24")})
	na := u.AddNode(b, netnstest.NodeConfig{Name: "a", Cluster: "c1", PodCIDRs: mustPrefixes("10.1.0.0/24")})
	nb := u.AddNode(b, netnstest.NodeConfig{Name: "b", Cluster: "c2", PodCIDRs: mustPrefixes("10.2.0.0/24")})

	// Plainly routed pods, outside the tunnel's AllowedIPs.
	plainA := na.AddPod(b, "plain-a", netip.MustParseAddr("10.11.0.2"))
	plainB := nb.AddPod(b, "plain-b", netip.MustParseAddr("10.12.0.2"))
	na.RouteVia(b, nb, netip.MustParsePrefix("10.12.0.0/24"))
	nb.RouteVia(b, na, netip.MustParsePrefix("10.11.0.0/24"))

	// Pods behind WireGuard.
	wgPodA, wgPodB := na.AddPod(b, "wg-a"), nb.AddPod(b, "wg-b")
	wa := startWGNode(ctx, b, na.NS, wireguard.Config{})
	wb := startWGNode(ctx, b, nb.NS, wireguard.Config{})
	wa.setPeers(ctx, b, wireguard.Peer{Name: "c2/b", PublicKey: wb.PublicKey,
		Endpoint: netip.AddrPortFrom(nb.IP, wireguard.DefaultListenPort), AllowedIPs: nb.PodCIDRs})
	wb.setPeers(ctx, b, wireguard.Peer{Name: "c1/a", PublicKey: wa.PublicKey,
		Endpoint: netip.AddrPortFrom(na.IP, wireguard.DefaultListenPort), AllowedIPs: na.PodCIDRs})

	for _, path := range []struct {
		name     string
		from, to *netnstest.Pod
	}{
		{"plain", plainA, plainB},
		{"wireguard-" + wa.Mode, wgPodA, wgPodB},
	} {
		b.Run("path="+path.name, func(b *testing.B) {
			port := startIperfServer(ctx, b, path.to)
			var bits float64
			b.ResetTimer()
			for range b.N {
				bits += runIperf(ctx, b, path.from, netip.AddrPortFrom(path.to.IP(true), uint16(port)))
			}
			b.ReportMetric(bits/float64(b.N)/1e9, "Gbit/s")
		})
	}
}

// startIperfServer runs an iperf3 server in the pod until the benchmark
// ends and returns its port once it listens.
func startIperfServer(ctx context.Context, b *testing.B, pod *netnstest.Pod) int {
	b.Helper()
	const port = 5201 // the pod's namespace is the benchmark's own
	cmd := exec.Command("iperf3", "--server", "--port", fmt.Sprint(port), "--forceflush")
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := pod.NS.Start(cmd); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	listening := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "Server listening on") {
				listening <- nil
				_, _ = io.Copy(io.Discard, out)
				return
			}
		}
		listening <- fmt.Errorf("iperf3 server in pod %s ended before listening: %v", pod.Name, sc.Err())
	}()
	select {
	case err := <-listening:
		if err != nil {
			b.Fatal(err)
		}
	case <-ctx.Done():
		b.Fatal(ctx.Err())
	}
	return port
}

// runIperf runs one iperf3 client from the pod and returns the bits per
// second the server received.
func runIperf(ctx context.Context, b *testing.B, from *netnstest.Pod, to netip.AddrPort) float64 {
	b.Helper()
	out, err := from.NS.Run(ctx, "iperf3", "--client", to.Addr().String(), "--port", fmt.Sprint(to.Port()),
		"--time", fmt.Sprint(iperfSeconds), "--omit", "1", "--json")
	if err != nil {
		b.Fatal(err)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		b.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	if res.Error != "" || res.End.SumReceived.BitsPerSecond == 0 {
		b.Fatalf("iperf3 %s -> %s: %q, %v bit/s", from.Name, to, res.Error, res.End.SumReceived.BitsPerSecond)
	}
	return res.End.SumReceived.BitsPerSecond
}
