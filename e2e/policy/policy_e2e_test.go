package policy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/lab/labtest"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

const (
	ns          = "shop"
	allowedPort = 8080 // the policy allows it
	otherPort   = 9090 // served too, not allowed
	iperfPort   = 5201 // allowed, for the long transfers
)

// TestMeshNetworkPolicy brings up two connected clusters and checks the
// promises of MeshNetworkPolicy on real traffic: backends in cluster 2
// admit frontends of cluster 1 on the allowed ports only and nobody else,
// and the agent's flow events name the policy behind each verdict;
// a new frontend pod is admitted without a policy change; replies of
// allowed connections are never dropped, also across policy revisions
// during long transfers both ways; a policy naming a cluster that does
// not exist admits nothing; deleting the policy restores default
// behaviour. One lab serves every step.
func TestMeshNetworkPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up a lab; skipped with -short")
	}
	privileged.Require(t)
	bins := labtest.Build(t)
	if bins.MeshAPIServer == "" {
		t.Skip("this module has no cmd/isthmus-apiserver yet")
	}
	l := labtest.Up(t, bins, labtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	c1, c2 := l.Topology.Clusters[0], l.Topology.Clusters[1]
	m1, m2 := meshCluster(t, l, c1.Name), meshCluster(t, l, c2.Name)
	if _, err := meshops.Connect(ctx, m1, []*meshops.Cluster{m2}, meshops.ConnectOptions{}); err != nil {
		t.Fatalf("connect %s and %s: %v", c1.Name, c2.Name, err)
	}
	k1, k2 := m1.Client(), m2.Client()
	for _, k := range []kubernetes.Interface{k1, k2} {
		if _, err := k.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	deploy(ctx, t, k2, "backend", 1, allowedPort, otherPort)
	deploy(ctx, t, k1, "frontend", 1, allowedPort)
	deploy(ctx, t, k1, "other", 1, allowedPort)
	backend := waitRunning(ctx, t, k2, "backend", 1)[0]
	frontend := waitRunning(ctx, t, k1, "frontend", 1)[0]
	other := waitRunning(ctx, t, k1, "other", 1)[0]
	policies := meshClient(t, l, c2.Name).MeshNetworkPolicies(ns)

	from := func(p corev1.Pod) source { return source{l: l, cluster: c1.Name, pod: p.Name} }
	to := func(port int) target { return target{ip: backend.Status.PodIP, port: port} }

	t.Run("without a policy every pod reaches the backend", func(t *testing.T) {
		eventually(ctx, t, "frontend and other reach backend", func() error {
			return errors.Join(from(frontend).reach(ctx, to(allowedPort)), from(other).reach(ctx, to(allowedPort)), from(frontend).reach(ctx, to(otherPort)))
		})
	})

	backendNode := nodeMaps(t, l, backend.Spec.NodeName)
	t.Run("frontends reach the backend on the allowed port only", func(t *testing.T) {
		if _, err := policies.Create(ctx, backendPolicy(c1.Name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitAccepted(ctx, t, policies, "backend", 1)
		before := backendNode.counters(t)
		eventually(ctx, t, "other pods of cluster 1 are denied", func() error { return from(other).denied(ctx, to(allowedPort)) })
		eventually(ctx, t, "frontend is denied the other port", func() error { return from(frontend).denied(ctx, to(otherPort)) })
		if err := from(frontend).reach(ctx, to(allowedPort)); err != nil {
			t.Errorf("frontend is denied the allowed port: %v", err)
		}
		// The denials are the tunnel program's verdicts, not a broken path.
		if d := backendNode.counters(t).sub(before); d[tunnelpolicy.ReasonNoMatch].Packets == 0 {
			t.Errorf("the backend's node counted no policy-no-match drops: %v", d)
		}
	})

	t.Run("flow events name the policy behind the verdict", func(t *testing.T) {
		api := agentAPI(t, l, backend.Spec.NodeName)
		policy := ns + "/backend"
		want := map[string]flowWant{
			"frontend allowed": {src: frontend.Status.PodIP, reason: "allowed-by-policy", policy: policy},
			"other dropped":    {src: other.Status.PodIP, dropped: true, reason: "policy-no-match", policy: policy},
		}
		eventually(ctx, t, "flow events of both verdicts on the backend's node", func() error {
			got, err := flowsTo(ctx, api, backend.Status.PodIP, allowedPort)
			if err != nil {
				return err
			}
			for what, w := range want {
				if !slices.ContainsFunc(got, w.matches) {
					return fmt.Errorf("no flow event %s (%+v) among %d: %v", what, w, len(got), got)
				}
			}
			return nil
		})
	})

	t.Run("a new frontend pod gets access without a policy change", func(t *testing.T) {
		scale(ctx, t, k1, "frontend", 2)
		var fresh corev1.Pod
		for _, p := range waitRunning(ctx, t, k1, "frontend", 2) {
			if p.Name != frontend.Name {
				fresh = p
			}
		}
		eventually(ctx, t, "the new frontend reaches backend", func() error { return from(fresh).reach(ctx, to(allowedPort)) })
		if err := from(fresh).denied(ctx, to(otherPort)); err != nil {
			t.Errorf("new frontend: %v", err)
		}
	})

	t.Run("replies are never dropped, across policy revisions", func(t *testing.T) {
		frontendNode := nodeMaps(t, l, frontend.Spec.NodeName)
		beforeB, beforeF := backendNode.counters(t), frontendNode.counters(t)
		rev := backendNode.revision(t)
		server, serverDone := startIperfServer(ctx, t, l, c2.Name, backend.Name)
		defer server()
		var out bytes.Buffer
		clientDone := make(chan error, 1)
		go func() {
			clientDone <- l.Exec(ctx, c1.Name, ns, frontend.Name,
				[]string{"iperf3", "-c", backend.Status.PodIP, "-p", fmt.Sprint(iperfPort), "--bidir", "-t", "5", "-J", "--connect-timeout", "3000"},
				lab.Stdio{Stdout: &out, Stderr: &out})
		}()
		// Mid-transfer, a policy change on the backend's node makes every
		// tracked flow there, replies included, be checked again.
		if _, err := policies.Create(ctx, extraPolicy(c1.Name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(ctx, t, "the policy revision to move on the backend's node", func() error {
			if r := backendNode.revision(t); r == rev {
				return fmt.Errorf("revision still %d", r)
			}
			return nil
		})
		select {
		case err := <-clientDone:
			t.Fatalf("iperf3 ended before the revision moved: %v\n%s", err, out.String())
		default:
		}
		if err := <-clientDone; err != nil {
			t.Fatalf("iperf3 --bidir: %v\n%s", err, out.String())
		}
		<-serverDone
		sent, received := iperfBytes(t, out.Bytes())
		if sent < 1<<20 || received < 1<<20 {
			t.Errorf("iperf3 moved %d bytes out and %d back, want at least 1 MiB each way", sent, received)
		}
		for name, d := range map[string]counters{"backend": backendNode.counters(t).sub(beforeB), "frontend": frontendNode.counters(t).sub(beforeF)} {
			for r, c := range d {
				if r.Dropped() && c.Packets > 0 {
					t.Errorf("the %s's node dropped %d packets (%s) during the transfers", name, c.Packets, r)
				}
			}
			if d[tunnelpolicy.ReasonReply].Packets == 0 {
				t.Errorf("the %s's node passed no replies: the tunnel program did not see the transfer (%v)", name, d)
			}
		}
	})

	t.Run("a policy naming a cluster that does not exist admits nothing", func(t *testing.T) {
		p, err := policies.Get(ctx, "backend", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Spec.Ingress[0].FromEndpoints[0].MatchLabels[protocol.LabelPolicyCluster] = "no-such-cluster"
		if _, err := policies.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitAccepted(ctx, t, policies, "backend", 2) // valid: it just matches nothing
		eventually(ctx, t, "frontend is denied", func() error { return from(frontend).denied(ctx, to(allowedPort)) })
	})

	t.Run("deleting the policies restores default behaviour", func(t *testing.T) {
		for _, name := range []string{"backend", "extra"} {
			if err := policies.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		eventually(ctx, t, "every pod reaches the backend again", func() error {
			return errors.Join(from(frontend).reach(ctx, to(allowedPort)), from(other).reach(ctx, to(allowedPort)), from(frontend).reach(ctx, to(otherPort)))
		})
	})
}

// backendPolicy admits frontends of cluster frontendCluster to backends
// on the allowed port and the iperf port.
func backendPolicy(frontendCluster string) *v1alpha1.MeshNetworkPolicy {
	return &v1alpha1.MeshNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "backend"},
		Spec: v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
			Ingress: []v1alpha1.IngressRule{{
				FromEndpoints: []metav1.LabelSelector{{MatchLabels: map[string]string{"app": "frontend", protocol.LabelPolicyCluster: frontendCluster}}},
				ToPorts: []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{
					{Port: fmt.Sprint(allowedPort), Protocol: v1alpha1.ProtocolTCP},
					{Port: fmt.Sprint(iperfPort), Protocol: v1alpha1.ProtocolTCP},
				}}},
			}},
		},
	}
}

// extraPolicy lets the other pods of cluster otherCluster reach backends
// on a port nothing serves: it adds policy entries on the backend's node
// (and so bumps the policy revision there) without changing what the
// frontends may do.
func extraPolicy(otherCluster string) *v1alpha1.MeshNetworkPolicy {
	return &v1alpha1.MeshNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "extra"},
		Spec: v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
			Ingress: []v1alpha1.IngressRule{{
				FromEndpoints: []metav1.LabelSelector{{MatchLabels: map[string]string{"app": "other", protocol.LabelPolicyCluster: otherCluster}}},
				ToPorts:       []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{{Port: "7777", Protocol: v1alpha1.ProtocolTCP}}}},
			}},
		},
	}
}

func meshCluster(t *testing.T, l *lab.Lab, name string) *meshops.Cluster {
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

func meshClient(t *testing.T, l *lab.Lab, name string) *client.Clientset {
	t.Helper()
	cfg, err := l.RESTConfig(name)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := client.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// waitAccepted waits for the mesh apiserver to accept generation of the
// policy.
func waitAccepted(ctx context.Context, t *testing.T, policies client.MeshNetworkPolicyInterface, name string, generation int64) {
	t.Helper()
	eventually(ctx, t, fmt.Sprintf("%s generation %d accepted", name, generation), func() error {
		p, err := policies.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
		if c == nil || c.ObservedGeneration != generation || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("status %+v", p.Status)
		}
		return nil
	})
}

// source is a pod to connect from; target an address to connect to.
type source struct {
	l            *lab.Lab
	cluster, pod string
}

type target struct {
	ip   string
	port int
}

// curl fetches the echo answer of t from inside the pod.
func (s source) curl(ctx context.Context, t target) (echo.Response, error) {
	var out, errOut bytes.Buffer
	err := s.l.Exec(ctx, s.cluster, ns, s.pod,
		[]string{"curl", "-sS", "--connect-timeout", "2", "--max-time", "5", fmt.Sprintf("http://%s:%d/", t.ip, t.port)},
		lab.Stdio{Stdout: &out, Stderr: &errOut})
	if err != nil {
		return echo.Response{}, fmt.Errorf("curl %s:%d from %s: %w: %s", t.ip, t.port, s.pod, err, strings.TrimSpace(errOut.String()))
	}
	var resp echo.Response
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		return echo.Response{}, fmt.Errorf("answer of %s:%d to %s: %q: %w", t.ip, t.port, s.pod, out.String(), err)
	}
	return resp, nil
}

// reach succeeds when the pod gets an answer from t.
func (s source) reach(ctx context.Context, t target) error {
	resp, err := s.curl(ctx, t)
	if err == nil && (resp.PodIP != t.ip || resp.Port != t.port) {
		err = fmt.Errorf("%s:%d answered as %s:%d", t.ip, t.port, resp.PodIP, resp.Port)
	}
	return err
}

// denied succeeds when the pod's connection to t times out: the tunnel
// program drops it silently.
func (s source) denied(ctx context.Context, t target) error {
	_, err := s.curl(ctx, t)
	var exit *exec.ExitError
	switch {
	case err == nil:
		return fmt.Errorf("%s reached %s:%d", s.pod, t.ip, t.port)
	case !errors.As(err, &exit):
		return err
	case exit.ExitCode() != 28: // curl: operation timed out
		return fmt.Errorf("%s to %s:%d failed other than by a timeout: %w", s.pod, t.ip, t.port, err)
	}
	return nil
}

// startIperfServer runs a one-off iperf3 server in the pod; stop kills
// it, done is closed when it exits.
func startIperfServer(ctx context.Context, t *testing.T, l *lab.Lab, cluster, pod string) (stop func(), done <-chan struct{}) {
	t.Helper()
	sctx, cancel := context.WithCancel(ctx)
	ch := make(chan struct{})
	var out bytes.Buffer
	go func() {
		defer close(ch)
		err := l.Exec(sctx, cluster, ns, pod, []string{"iperf3", "-s", "-1", "-p", fmt.Sprint(iperfPort)}, lab.Stdio{Stdout: &out, Stderr: &out})
		if err != nil && sctx.Err() == nil {
			t.Logf("iperf3 server: %v\n%s", err, out.String())
		}
	}()
	// The server is ready once it listens: wait for its port.
	eventually(ctx, t, "the iperf3 server to listen", func() error {
		var ss bytes.Buffer
		if err := l.Exec(ctx, cluster, ns, pod, []string{"ss", "-Htln", fmt.Sprintf("sport = :%d", iperfPort)}, lab.Stdio{Stdout: &ss}); err != nil {
			return err
		}
		if !strings.Contains(ss.String(), "LISTEN") {
			return errors.New("not listening yet")
		}
		return nil
	})
	return func() { cancel(); <-ch }, ch
}

// iperfBytes returns the bytes the iperf3 client sent and received, from
// its JSON report.
func iperfBytes(t *testing.T, report []byte) (sent, received int64) {
	t.Helper()
	var r struct {
		End struct {
			SumSent          struct{ Bytes int64 } `json:"sum_sent"`
			SumReceived      struct{ Bytes int64 } `json:"sum_received"`
			SumSentBidir     struct{ Bytes int64 } `json:"sum_sent_bidir_reverse"`
			SumReceivedBidir struct{ Bytes int64 } `json:"sum_received_bidir_reverse"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(report, &r); err != nil {
		t.Fatalf("iperf3 report: %v\n%s", err, report)
	}
	if r.Error != "" {
		t.Fatalf("iperf3: %s", r.Error)
	}
	return r.End.SumSent.Bytes, r.End.SumReceivedBidir.Bytes
}

// agentAPI dials the local API of the agent of a lab node.
func agentAPI(t *testing.T, l *lab.Lab, node string) agentv1.AgentClient {
	t.Helper()
	socket := filepath.Join(l.Dir.NodeDir(node), "agent", "agent.sock")
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewAgentClient(conn)
}

// flowsTo returns the flow events the agent keeps of ingress traffic to
// ip:port.
func flowsTo(ctx context.Context, api agentv1.AgentClient, ip string, port int) ([]*agentv1.Flow, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := api.Flows(ctx, &agentv1.FlowsRequest{Last: 1024, Direction: "ingress", Address: ip, Port: uint32(port)})
	if err != nil {
		return nil, err
	}
	var out []*agentv1.Flow
	for {
		fl, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, fl)
	}
}

// flowWant describes a flow event to find.
type flowWant struct {
	src     string
	dropped bool
	reason  string
	policy  string
}

func (w flowWant) matches(fl *agentv1.Flow) bool {
	host, _, _ := strings.Cut(fl.Source, ":")
	return host == w.src && fl.Dropped == w.dropped && fl.Reason == w.reason && slices.Equal(fl.Policies, []string{w.policy})
}

// node is a lab node's pinned maps, opened from the test.
type node struct {
	name string
	maps *dpmaps.Maps
}

func nodeMaps(t *testing.T, l *lab.Lab, name string) node {
	t.Helper()
	n, ok := l.Topology.Node(name)
	if !ok {
		t.Fatalf("no node %s", name)
	}
	m, err := dpmaps.Open(dpmaps.Config{Root: filepath.Join(lab.BPFRoot, n.BPFDir), RefuseIncompatible: true})
	if err != nil {
		t.Fatalf("open the maps of %s: %v", name, err)
	}
	t.Cleanup(func() { m.Close() })
	return node{name: name, maps: m}
}

type counters map[tunnelpolicy.Reason]tunnelpolicy.Counter

func (n node) counters(t *testing.T) counters {
	t.Helper()
	c, err := tunnelpolicy.ReadCounters(n.maps)
	if err != nil {
		t.Fatalf("counters of %s: %v", n.name, err)
	}
	return c
}

func (c counters) sub(before counters) counters {
	out := counters{}
	for r, v := range c {
		b := before[r]
		if d := (tunnelpolicy.Counter{Packets: v.Packets - b.Packets, Bytes: v.Bytes - b.Bytes}); d.Packets > 0 {
			out[r] = d
		}
	}
	return out
}

func (n node) revision(t *testing.T) uint32 {
	t.Helper()
	s, err := n.maps.Config.Get()
	if err != nil {
		t.Fatal(err)
	}
	return s.PolicyRevision
}

func deploy(ctx context.Context, t *testing.T, k kubernetes.Interface, app string, replicas int32, ports ...int32) {
	t.Helper()
	labels := map[string]string{"app": app}
	var cp []corev1.ContainerPort
	for _, p := range ports {
		cp = append(cp, corev1.ContainerPort{ContainerPort: p})
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{Name: "echo", Image: "isthmus.dev/echo", Ports: cp}},
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					TerminationGracePeriodSeconds: ptr.To[int64](5),
				},
			},
		},
	}
	if _, err := k.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func scale(ctx context.Context, t *testing.T, k kubernetes.Interface, app string, replicas int32) {
	t.Helper()
	s, err := k.AppsV1().Deployments(ns).GetScale(ctx, app, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Spec.Replicas = replicas
	if _, err := k.AppsV1().Deployments(ns).UpdateScale(ctx, app, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitRunning waits until exactly n pods of app exist, all Running and
// Ready with an IP.
func waitRunning(ctx context.Context, t *testing.T, k kubernetes.Interface, app string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(ctx, t, fmt.Sprintf("%d running pods of %s", n, app), func() error {
		list, err := k.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return err
		}
		pods = list.Items
		if len(pods) != n {
			return fmt.Errorf("%d pods", len(pods))
		}
		for _, p := range pods {
			if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.DeletionTimestamp != nil {
				return fmt.Errorf("pod %s: %s %q", p.Name, p.Status.Phase, p.Status.PodIP)
			}
		}
		return nil
	})
	return pods
}

// eventually retries check until it succeeds, or fails the test with its
// last error after two minutes.
func eventually(ctx context.Context, t *testing.T, what string, check func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; last: %v", what, ctx.Err(), err)
		case <-tick.C:
		}
	}
}
