package labe2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/labtest"
	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
	"github.com/isthmus-mesh/isthmus/internal/netnstest"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// TestNodeDatapath brings up a lab of two clusters of one node each, with
// the real isthmus-apiserver and isthmus-agent, connects them, and checks
// the node datapath the agents set up: pods reach pods of the other
// cluster through the agents' WireGuard tunnel, which wg(8) shows with a
// recent handshake; only WireGuard crosses the underlay; the tunnel policy
// drops and counts a denied flow and passes an allowed one; a pod's
// connect to a global service's address lands on the remote backend
// (socket LB); isthmus status reports both clusters ready from the agents'
// MeshAgents; a deleted WireGuard device is made again; restarting the
// agents during a steady request loop fails no request; and disconnecting
// the clusters withdraws the peers and routes.
func TestNodeDatapath(t *testing.T) {
	m := newMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l, bins := m.lab, m.bins
	c1, c2, n1, n2, k1 := m.c1, m.c2, m.n1, m.n2, m.k1
	client, server, denied, vip := m.client, m.server, m.denied, m.vip

	if _, err := get(ctx, l, c1.Name, client.Name, podURL(server), 2*time.Second); err == nil {
		t.Fatal("the client reached the other cluster's pod before the clusters were connected")
	}
	t.Logf("MEASURED: first cross-cluster request succeeded %v after connect returned", m.connect(ctx, t))

	t.Run("isthmus status reports both clusters ready", func(t *testing.T) {
		checkStatusReady(ctx, t, l, bins.Isthmus, c1.Name, c2.Name)
	})

	keys := map[string]string{}
	for _, n := range []topology.Node{n1, n2} {
		st, err := agentAPI(t, l, n).Status(ctx, &agentv1.StatusRequest{})
		if err != nil || st.Datapath.GetWireguard() == nil {
			t.Fatalf("status of the agent on %s: %v, %v", n.Name, st, err)
		}
		keys[n.Name] = st.Datapath.Wireguard.PublicKey
	}

	t.Run("wg show reports the peer and a recent handshake", func(t *testing.T) {
		for _, pair := range [][2]topology.Node{{n1, n2}, {n2, n1}} {
			checkPeer(ctx, t, pair[0], pair[1], keys[pair[1].Name])
		}
		node, err := k1.CoreV1().Nodes().Get(ctx, n1.Name, metav1.GetOptions{})
		if err != nil || node.Annotations[meshconfig.NodeWireGuardPubKeyAnnotation] != keys[n1.Name] {
			t.Errorf("Node %s: annotation %q, want %s (%v)", n1.Name, node.Annotations[meshconfig.NodeWireGuardPubKeyAnnotation], keys[n1.Name], err)
		}
	})

	t.Run("only WireGuard crosses the underlay", func(t *testing.T) {
		capture, err := netnstest.CaptureAt(nsexec.Path(l.Topology.UnderlayNetns))
		if err != nil {
			t.Fatal(err)
		}
		for _, url := range []string{podURL(server), "http://" + vip + "/"} {
			if _, err := get(ctx, l, c1.Name, client.Name, url, 5*time.Second); err != nil {
				t.Error(err)
			}
		}
		if _, err := get(ctx, l, c2.Name, server.Name, podURL(client), 5*time.Second); err != nil {
			t.Error(err)
		}
		frames, err := capture.Stop()
		if err != nil {
			t.Fatal(err)
		}
		checkOnlyWireGuard(t, frames, []netip.Addr{n1.IP, n2.IP}, []netip.Prefix{c1.PodCIDR, c2.PodCIDR})
	})

	t.Run("tunnel policy drops and counts a denied flow, passes an allowed one", func(t *testing.T) {
		checkPolicy(ctx, t, l, bins.Agent, c1.Name, n2, client, server, denied)
	})

	t.Run("a global service address reaches the remote backend", func(t *testing.T) {
		r, err := get(ctx, l, c1.Name, client.Name, "http://"+vip+"/", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r.Cluster != c2.Name || r.Pod != server.Name || r.Port != serverPort {
			t.Errorf("%s:80 answered by %+v, want %s in %s on %d", vip, r.Identity, server.Name, c2.Name, serverPort)
		}
		if host, _, _ := strings.Cut(r.Client, ":"); host != client.Status.PodIP {
			t.Errorf("server saw the client as %s, want its pod IP %s (no NAT on the way)", r.Client, client.Status.PodIP)
		}
	})

	t.Run("a WireGuard device that goes away is made again, with the tunnel policy", func(t *testing.T) {
		checkDeviceRecreated(ctx, t, l, c1.Name, client, server, n1)
	})

	t.Run("restarting the agents fails no request", func(t *testing.T) {
		checkRestarts(ctx, t, l, c1.Name, client.Name, "http://"+vip+"/", n1, n2)
	})

	t.Run("disconnecting withdraws the peers and routes", func(t *testing.T) {
		m.disconnect(ctx, t)
		if _, err := get(ctx, l, c1.Name, client.Name, podURL(server), 2*time.Second); err == nil {
			t.Error("the client still reaches the other cluster's pod after the clusters were disconnected")
		}
	})
}

// disconnect undoes connect, as `isthmus disconnect` does.
func disconnect(ctx context.Context, t testing.TB, l *lab.Lab, a, b string) {
	t.Helper()
	if _, err := meshops.Disconnect(ctx, meshopsCluster(t, l, a), []*meshops.Cluster{meshopsCluster(t, l, b)}, meshops.DisconnectOptions{}); err != nil {
		t.Fatalf("disconnect %s and %s: %v", a, b, err)
	}
}

func meshopsCluster(t testing.TB, l *lab.Lab, name string) *meshops.Cluster {
	t.Helper()
	cfg, err := l.RESTConfig(name)
	if err != nil {
		t.Fatal(err)
	}
	c, err := meshops.NewCluster(name, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mesh is a lab of two clusters of one node each, with the real
// isthmus-apiserver and isthmus-agent: a client pod in cluster 1; a
// server and a pod no policy will allow in cluster 2; and the global
// Service "server" in both, with its backend in cluster 2 only.
type mesh struct {
	lab                    *lab.Lab
	bins                   labtest.Binaries
	c1, c2                 topology.Cluster
	n1, n2                 topology.Node
	k1, k2                 kubernetes.Interface
	client, server, denied corev1.Pod
	// vip is the ClusterIP of the Service "server" in cluster 1.
	vip string
}

func newMesh(tb testing.TB) *mesh {
	tb.Helper()
	if testing.Short() {
		tb.Skip("brings up a lab; skipped with -short")
	}
	privileged.Require(tb)
	requireTools(tb, "wg", "curl", "ip")
	bins := labtest.Build(tb)
	if bins.MeshAPIServer == "" {
		tb.Skip("this module has no cmd/isthmus-apiserver yet; the lab runs the mesh with it")
	}
	l := labtest.Up(tb, bins, labtest.Options{Clusters: 2, NodesPerCluster: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m := &mesh{lab: l, bins: bins, c1: l.Topology.Clusters[0], c2: l.Topology.Clusters[1]}
	m.n1, m.n2 = m.c1.Nodes[0], m.c2.Nodes[0]
	m.k1, m.k2 = kubeClient(tb, l, m.c1.Name), kubeClient(tb, l, m.c2.Name)
	deploy(ctx, tb, m.k1, "client")
	deploy(ctx, tb, m.k2, "server")
	deploy(ctx, tb, m.k2, "denied")
	m.vip = globalService(ctx, tb, m.k1, "server")
	globalService(ctx, tb, m.k2, "server")
	m.client = runningPod(ctx, tb, m.k1, "client")
	m.server = runningPod(ctx, tb, m.k2, "server")
	m.denied = runningPod(ctx, tb, m.k2, "denied")
	return m
}

// connect connects the clusters and returns how long after that the
// client's first request to the server's pod succeeded. The requests
// time out after half a second, which bounds the measurement's error (a
// connect whose SYN met no route yet waits for TCP's one-second
// retransmission instead).
func (m *mesh) connect(ctx context.Context, tb testing.TB) time.Duration {
	tb.Helper()
	connect(ctx, tb, m.lab, m.c1.Name, m.c2.Name)
	connected := time.Now()
	var lastErr error
	waitUntil(ctx, tb, "the first cross-cluster request", func() bool {
		r, err := get(ctx, m.lab, m.c1.Name, m.client.Name, podURL(m.server), 500*time.Millisecond)
		lastErr = err
		return err == nil && r.Pod == m.server.Name
	}, func() string { return fmt.Sprint(lastErr) })
	return time.Since(connected).Round(10 * time.Millisecond)
}

// disconnect disconnects the clusters and waits until the client's node
// has withdrawn the other cluster's peer and routes.
func (m *mesh) disconnect(ctx context.Context, tb testing.TB) {
	tb.Helper()
	disconnect(ctx, tb, m.lab, m.c1.Name, m.c2.Name)
	for _, n := range []topology.Node{m.n1, m.n2} {
		var peers, routes string
		waitUntil(ctx, tb, "the peer and routes of "+n.Name+" to go", func() bool {
			peers, _ = inNode(ctx, n, "wg", "show", n.WireGuardDevice, "peers")
			routes, _ = inNode(ctx, n, "ip", "route", "show", "dev", n.WireGuardDevice, "proto", "73")
			return strings.TrimSpace(peers) == "" && strings.TrimSpace(routes) == ""
		}, func() string { return fmt.Sprintf("peers %q, routes %q", peers, routes) })
	}
}

// connect connects the clusters both ways, as `isthmus connect` does.
func connect(ctx context.Context, t testing.TB, l *lab.Lab, a, b string) {
	t.Helper()
	if _, err := meshops.Connect(ctx, meshopsCluster(t, l, a), []*meshops.Cluster{meshopsCluster(t, l, b)}, meshops.ConnectOptions{}); err != nil {
		t.Fatalf("connect %s and %s: %v", a, b, err)
	}
}

// checkStatusReady runs `isthmus status --wait`, which reads the agents'
// MeshAgents.
func checkStatusReady(ctx context.Context, t *testing.T, l *lab.Lab, isthmus, self, other string) {
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, isthmus, "status", "--kubeconfig", l.KubeconfigPath(), "--context", self,
		"--wait", "--wait-duration", "2m", "-o", "json")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("isthmus status --wait: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	var r meshops.StatusReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("isthmus status -o json: %v\n%s", err, out.String())
	}
	if !r.Ready || r.AgentsReporting != 1 || len(r.Clusters) != 2 {
		t.Fatalf("status: ready %v, %d agents, %d clusters:\n%s", r.Ready, r.AgentsReporting, len(r.Clusters), out.String())
	}
	for i, want := range []string{self, other} {
		c := r.Clusters[i]
		if c.Name != want || !c.Ready || c.Synced != 1 || c.Connected != 1 || c.Entries.Nodes != 1 || c.Entries.IPCache == 0 {
			t.Errorf("cluster %s in the status: %+v", want, c)
		}
	}
}

// checkPeer checks with wg(8) that node a's device has b as its only
// peer, at b's node IP and WireGuard port, for b's pod CIDR, with a
// recent handshake.
func checkPeer(ctx context.Context, t *testing.T, a, b topology.Node, bKey string) {
	t.Helper()
	out, err := inNode(ctx, a, "wg", "show", a.WireGuardDevice, "dump")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("wg show %s dump on %s: want the device and one peer:\n%s", a.WireGuardDevice, a.Name, out)
	}
	// public key, preshared key, endpoint, allowed ips, latest handshake,
	// rx, tx, keepalive
	f := strings.Split(lines[1], "\t")
	want := []string{bKey, "(none)", netip.AddrPortFrom(b.IP, topology.WireGuardPort).String(), b.PodCIDR.String()}
	if len(f) < 8 || !slices.Equal(f[:4], want) {
		t.Errorf("peer of %s: %q, want %q", a.Name, f, want)
		return
	}
	hs, _ := strconv.ParseInt(f[4], 10, 64)
	if age := time.Since(time.Unix(hs, 0)); hs == 0 || age > 3*time.Minute {
		t.Errorf("latest handshake of %s with %s: %d (%v ago), want a recent one", a.Name, b.Name, hs, age)
	}
	if rx, _ := strconv.ParseInt(f[5], 10, 64); rx == 0 {
		t.Errorf("%s received nothing from %s", a.Name, b.Name)
	}
}

// checkOnlyWireGuard checks that between the nodes only WireGuard's UDP
// crossed the underlay, that some did, and that no pod address showed on
// the underlay at all.
func checkOnlyWireGuard(t *testing.T, frames []netnstest.Frame, nodes []netip.Addr, pods []netip.Prefix) {
	t.Helper()
	inPods := func(a netip.Addr) bool {
		return slices.ContainsFunc(pods, func(p netip.Prefix) bool { return p.Contains(a) })
	}
	var wg, other int
	for _, f := range frames {
		if f.EtherType != netnstest.EtherTypeIPv4 && f.EtherType != netnstest.EtherTypeIPv6 {
			continue
		}
		if inPods(f.Src) || inPods(f.Dst) {
			t.Errorf("a pod address crossed the underlay in the clear: %v", f)
			continue
		}
		if !slices.Contains(nodes, f.Src) || !slices.Contains(nodes, f.Dst) {
			other++ // the agents and kubelets talking to the API addresses
			continue
		}
		if f.Protocol != syscall.IPPROTO_UDP || (f.SrcPort != topology.WireGuardPort && f.DstPort != topology.WireGuardPort) {
			t.Errorf("non-WireGuard packet between the nodes: %v", f)
			continue
		}
		wg++
	}
	if wg == 0 {
		t.Errorf("no WireGuard packet between the nodes among %d frames", len(frames))
	}
	t.Logf("the underlay carried %d WireGuard frames between the nodes; %d frames of other node traffic (to the API addresses)", wg, other)
}

// checkPolicy writes policy for node n2's pods straight into its pinned
// maps, as the policy reconciler would: server admits the client on its
// port, denied admits nobody. Then the client reaches server, not denied;
// the drop is counted in the maps and in the agent's metrics, and shows in
// its flow stream.
func checkPolicy(ctx context.Context, t *testing.T, l *lab.Lab, agentBin, clientCluster string, n2 topology.Node, client, server, denied corev1.Pod) {
	m, err := dpmaps.Open(dpmaps.Config{Root: filepath.Join(lab.BPFRoot, n2.BPFDir), RefuseIncompatible: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	identity := func(p corev1.Pod) dpmaps.IPCacheEntry {
		e, ok, err := m.IPCache.Lookup(netip.MustParseAddr(p.Status.PodIP))
		if err != nil || !ok || e.Identity == 0 {
			t.Fatalf("ipcache of %s has no identity for %s (%s): %v", n2.Name, p.Name, p.Status.PodIP, err)
		}
		return e
	}
	clientID, serverID, deniedID := identity(client).Identity, identity(server).Identity, identity(denied).Identity
	const rule = 4242
	allow := dpmaps.PolicyEntryKey{Direction: dpmaps.Ingress, LocalIdentity: serverID, RemoteIdentity: clientID, Port: serverPort, Protocol: dpmaps.ProtoTCP}
	t.Cleanup(func() {
		_ = m.Policy.Delete(allow)
		_ = m.Enforcement.Set(serverID, dpmaps.Enforced{})
		_ = m.Enforcement.Set(deniedID, dpmaps.Enforced{})
		_, _ = m.Config.BumpPolicyRevision()
	})
	for _, err := range []error{
		m.Policy.Upsert(allow, dpmaps.PolicyEntry{Verdict: dpmaps.Allow, RuleID: rule}),
		m.Enforcement.Set(serverID, dpmaps.Enforced{Ingress: true}),
		m.Enforcement.Set(deniedID, dpmaps.Enforced{Ingress: true}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Config.BumpPolicyRevision(); err != nil {
		t.Fatal(err)
	}
	before, err := tunnelpolicy.ReadCounters(m)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := get(ctx, l, clientCluster, client.Name, podURL(server), 5*time.Second); err != nil {
		t.Errorf("allowed flow: %v", err)
	}
	if r, err := get(ctx, l, clientCluster, client.Name, podURL(denied), 2*time.Second); err == nil {
		t.Errorf("denied flow passed: answered by %+v", r.Identity)
	}
	after, err := tunnelpolicy.ReadCounters(m)
	if err != nil {
		t.Fatal(err)
	}
	if d := after[tunnelpolicy.ReasonNoMatch].Packets - before[tunnelpolicy.ReasonNoMatch].Packets; d == 0 {
		t.Errorf("no packet counted as %s: before %v, after %v", tunnelpolicy.ReasonNoMatch, before, after)
	}
	if d := after[tunnelpolicy.ReasonAllowedPolicy].Packets - before[tunnelpolicy.ReasonAllowedPolicy].Packets; d == 0 {
		t.Errorf("no flow counted as %s: before %v, after %v", tunnelpolicy.ReasonAllowedPolicy, before, after)
	}

	// The agent's view of the same: metrics and flows.
	text, err := metrics(ctx, n2)
	if err != nil {
		t.Fatal(err)
	}
	series := `isthmus_agent_tunnel_packets_total{reason="policy-no-match",verdict="dropped"}`
	if v, ok := metricValue(text, series); !ok || v == 0 {
		t.Errorf("metric %s = %v (present %v), want > 0", series, v, ok)
	}
	api := agentAPI(t, l, n2)
	checkFlow := func(verdict agentv1.Verdict, dst corev1.Pod, reason string, ruleID uint32) {
		t.Helper()
		stream, err := api.Flows(ctx, &agentv1.FlowsRequest{Last: 1000, Verdict: verdict, Address: dst.Status.PodIP, Port: serverPort})
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		for {
			fl, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, fmt.Sprintf("%s %s->%s %s", fl.Direction, fl.Source, fl.Destination, fl.Reason))
			src, _ := netip.ParseAddrPort(fl.Source)
			if src.Addr().String() == client.Status.PodIP && fl.Destination == netip.AddrPortFrom(netip.MustParseAddr(dst.Status.PodIP), serverPort).String() &&
				fl.Reason == reason && fl.Direction == "ingress" && fl.SourceIdentity == uint32(clientID) && fl.RuleId == ruleID {
				return
			}
		}
		t.Errorf("no %s flow %s -> %s among %d: %v", reason, client.Status.PodIP, dst.Status.PodIP, len(seen), seen)
	}
	checkFlow(agentv1.Verdict_VERDICT_DROPPED, denied, tunnelpolicy.ReasonNoMatch.String(), 0)
	checkFlow(agentv1.Verdict_VERDICT_PASSED, server, tunnelpolicy.ReasonAllowedPolicy.String(), rule)

	// The command line shows the drop too.
	out, err := exec.CommandContext(ctx, agentBin, "flows", "--api-socket", agentSocket(l, n2), "--dropped", "--last", "1000", "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("isthmus-agent flows: %v\n%s", err, out)
	}
	want := fmt.Sprintf(`"destination":"%s:%d"`, denied.Status.PodIP, serverPort)
	if !strings.Contains(string(out), want) || !strings.Contains(string(out), `"reason":"policy-no-match"`) {
		t.Errorf("isthmus-agent flows --dropped -o json lacks the drop to %s:\n%s", denied.Status.PodIP, out)
	}
}

// checkDeviceRecreated deletes node n's WireGuard device, as an operator
// or a crashed helper would, and checks that the agent makes it again,
// with its peer and the tunnel policy programs, and traffic resumes.
func checkDeviceRecreated(ctx context.Context, t *testing.T, l *lab.Lab, cluster string, client, server corev1.Pod, n topology.Node) {
	api := agentAPI(t, l, n)
	st, err := api.Status(ctx, &agentv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	recreations := st.Datapath.GetWireguard().GetRecreations()
	if _, err := inNode(ctx, n, "ip", "link", "del", n.WireGuardDevice); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	var lastErr error
	waitUntil(ctx, t, "traffic through the re-created device", func() bool {
		_, lastErr = get(ctx, l, cluster, client.Name, podURL(server), time.Second)
		return lastErr == nil
	}, func() string { return fmt.Sprint(lastErr) })
	t.Logf("MEASURED: traffic resumed %v after the WireGuard device of %s was deleted", time.Since(deleted).Round(10*time.Millisecond), n.Name)
	st, err = api.Status(ctx, &agentv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if wg := st.Datapath.GetWireguard(); wg.GetRecreations() != recreations+1 || !st.Datapath.TunnelPolicyAttached || wg.GetPeers() != 1 {
		t.Errorf("after the device was deleted: recreations %d (was %d), tunnel policy attached %v, peers %d", wg.GetRecreations(), recreations, st.Datapath.TunnelPolicyAttached, wg.GetPeers())
	}
	// The programs on the new device see the new flow.
	stream, err := api.Flows(ctx, &agentv1.FlowsRequest{Last: 1000, Address: server.Status.PodIP, Direction: "egress", Verdict: agentv1.Verdict_VERDICT_PASSED})
	if err != nil {
		t.Fatal(err)
	}
	for {
		fl, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			t.Errorf("no egress flow to %s seen since the device was re-created", server.Status.PodIP)
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if fl.Time.AsTime().After(deleted) {
			return
		}
	}
}

// requestLog collects the results of the request loop as they arrive.
type requestLog struct {
	mu      sync.Mutex // guards the fields below
	partial []byte
	ok      int
	failed  []string
	times   []time.Duration
	got     chan struct{} // capacity 1: a result arrived
}

func (r *requestLog) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.partial = append(r.partial, b...)
	for {
		i := bytes.IndexByte(r.partial, '\n')
		if i < 0 {
			break
		}
		line := string(r.partial[:i])
		r.partial = r.partial[i+1:]
		var code int
		var secs float64
		if _, err := fmt.Sscan(line, &code, &secs); err != nil || code != 200 {
			r.failed = append(r.failed, line)
		} else {
			r.ok++
		}
		d := time.Duration(secs * float64(time.Second))
		r.times = append(r.times, d)
		select {
		case r.got <- struct{}{}:
		default:
		}
	}
	return len(b), nil
}

func (r *requestLog) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ok + len(r.failed)
}

// requestLoop is run by sh in the client pod: a new connection every
// 50ms until the file $1 exists, each printing "<status> <seconds>".
const requestLoop = `while [ ! -e "$1" ]; do
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 5 "$2" || true
  sleep 0.05
done`

// restartResult is what the request loop saw across agent restarts.
type restartResult struct {
	requests int
	failed   []string
	p50, max time.Duration
	// serving and synced are, per restart, the time until the new agent
	// served its API and until it completed its initial sync.
	serving, synced []time.Duration
	// recreated lists the nodes whose WireGuard device the restart made
	// anew rather than taking it over.
	recreated []string
}

// measureRestarts restarts each node's agent, one after the other, while
// the client pod makes a steady stream of new connections to url, and
// returns what the stream saw. Each restart lasts until the new agent has
// completed its initial sync and the pruning after it.
func measureRestarts(ctx context.Context, tb testing.TB, l *lab.Lab, cluster, pod, url string, nodes ...topology.Node) restartResult {
	tb.Helper()
	ifindex := func(n topology.Node) string {
		out, err := inNode(ctx, n, "cat", "/sys/class/net/"+n.WireGuardDevice+"/ifindex")
		if err != nil {
			tb.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	before := map[string]string{}
	for _, n := range nodes {
		before[n.Name] = ifindex(n)
	}
	stop := filepath.Join(tb.TempDir(), "stop")
	log := &requestLog{got: make(chan struct{}, 1)}
	loopDone := make(chan error, 1)
	go func() {
		loopDone <- l.Exec(ctx, cluster, namespace, pod, []string{"sh", "-c", requestLoop, "sh", stop, url}, lab.Stdio{Stdout: log, Stderr: log})
	}()
	waitRequests := func(n int) {
		tb.Helper()
		for log.count() < n {
			select {
			case <-log.got:
			case err := <-loopDone:
				tb.Fatalf("request loop ended early: %v", err)
			case <-ctx.Done():
				tb.Fatal(ctx.Err())
			}
		}
	}
	var res restartResult
	waitRequests(20)
	for _, n := range nodes {
		begin := time.Now()
		if err := l.Restart(ctx, "isthmus-agent/"+n.Name); err != nil {
			tb.Fatalf("restart the agent of %s: %v", n.Name, err)
		}
		res.serving = append(res.serving, time.Since(begin))
		api := agentAPI(tb, l, n)
		waitUntil(ctx, tb, "the restarted agent on "+n.Name+" to complete its initial sync, attach the tunnel policy and set its peer", func() bool {
			st, err := api.Status(ctx, &agentv1.StatusRequest{})
			return err == nil && st.InitialSyncDone && st.Started.AsTime().After(begin) &&
				st.Datapath.GetTunnelPolicyAttached() && st.Datapath.GetWireguard().GetPeers() == 1
		}, func() string { return "" })
		res.synced = append(res.synced, time.Since(begin))
		waitRequests(log.count() + 10)
	}
	if err := os.WriteFile(stop, nil, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := <-loopDone; err != nil {
		tb.Errorf("request loop: %v", err)
	}
	log.mu.Lock()
	times := slices.Clone(log.times)
	res.failed = slices.Clone(log.failed)
	log.mu.Unlock()
	slices.Sort(times)
	res.requests, res.p50, res.max = len(times), times[len(times)/2], times[len(times)-1]
	for _, n := range nodes {
		if ifindex(n) != before[n.Name] {
			res.recreated = append(res.recreated, n.Name)
		}
	}
	return res
}

// checkRestarts restarts each node's agent during a steady request loop
// and checks that no request failed and that the restarted agents took
// their WireGuard devices over.
func checkRestarts(ctx context.Context, t *testing.T, l *lab.Lab, cluster, pod, url string, nodes ...topology.Node) {
	res := measureRestarts(ctx, t, l, cluster, pod, url, nodes...)
	for i, n := range nodes {
		t.Logf("MEASURED: agent of %s restarted: serving its API after %v, initial sync done after %v",
			n.Name, res.serving[i].Round(10*time.Millisecond), res.synced[i].Round(10*time.Millisecond))
	}
	t.Logf("MEASURED: %d requests across the restarts, %d failed; latency p50 %v, max %v", res.requests, len(res.failed), res.p50, res.max)
	if len(res.failed) > 0 {
		t.Errorf("%d of %d requests failed during the agent restarts: %q", len(res.failed), res.requests, res.failed)
	}
	if len(res.recreated) > 0 {
		t.Errorf("the restarts re-created the WireGuard devices of %v; they should be taken over", res.recreated)
	}
}
