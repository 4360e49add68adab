package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/lab/labtest"
	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/lab/underlay"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// TestLab brings up two clusters of two nodes and checks what the lab
// promises: real scheduling, ReplicaSets and EndpointSlices over lab nodes
// and pods, pod-to-pod traffic within a cluster, none across clusters, and
// a down that leaves nothing behind.
func TestLab(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up a lab; skipped with -short")
	}
	privileged.Require(t)
	bins := labtest.Build(t)
	l := labtest.Up(t, bins, labtest.Options{WithoutMesh: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	topo := l.Topology
	c1, c2 := topo.Clusters[0], topo.Clusters[1]
	k1, k2 := client(t, l, c1.Name), client(t, l, c2.Name)

	t.Run("nodes", func(t *testing.T) {
		for _, c := range topo.Clusters {
			nodes, err := client(t, l, c.Name).CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(nodes.Items) != len(c.Nodes) {
				t.Fatalf("%s has %d nodes, want %d", c.Name, len(nodes.Items), len(c.Nodes))
			}
			for _, n := range nodes.Items {
				want, _ := topo.Node(n.Name)
				if n.Spec.PodCIDR != want.PodCIDR.String() || !ready(n.Status.Conditions) || internalIP(n) != want.IP.String() {
					t.Errorf("node %s: podCIDR %s, IP %s, conditions %v", n.Name, n.Spec.PodCIDR, internalIP(n), n.Status.Conditions)
				}
			}
		}
	})

	// Three replicas spread over both nodes of cluster 1 by the real
	// scheduler, one replica in cluster 2.
	deploy(ctx, t, k1, "echo", 3)
	deploy(ctx, t, k2, "echo", 1)
	pods1 := waitRunning(ctx, t, k1, "echo", 3)
	pods2 := waitRunning(ctx, t, k2, "echo", 1)

	t.Run("pod IPs from node pod CIDRs", func(t *testing.T) {
		for _, p := range append(slices.Clone(pods1), pods2...) {
			node, ok := topo.Node(p.Spec.NodeName)
			ip, err := netip.ParseAddr(p.Status.PodIP)
			if !ok || err != nil || !node.PodCIDR.Contains(ip) || len(p.Status.PodIPs) != 1 || p.Status.HostIP != node.IP.String() {
				t.Errorf("pod %s on %s has IP %q (host %s), want one from %s", p.Name, p.Spec.NodeName, p.Status.PodIP, p.Status.HostIP, node.PodCIDR)
			}
		}
	})

	t.Run("EndpointSlice controller lists the pods", func(t *testing.T) {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default"},
			Spec: corev1.ServiceSpec{
				ClusterIP: "10.96.50.104",
				Selector:  map[string]string{"app": "echo"},
				Ports:     []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		}
		if _, err := k1.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, p := range pods1 {
			want = append(want, p.Status.PodIP)
		}
		slices.Sort(want)
		var got []string
		eventually(ctx, t, "EndpointSlice with the 3 pod IPs", func() bool {
			list, err := k1.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
			if err != nil {
				return false
			}
			got = readyAddresses(list.Items)
			return slices.Equal(got, want)
		}, func() string { return fmt.Sprintf("ready endpoints %v, want %v", got, want) })
	})

	byNode := map[string]corev1.Pod{}
	for _, p := range pods1 {
		byNode[p.Spec.NodeName] = p
	}
	from, to := byNode[c1.Nodes[0].Name], byNode[c1.Nodes[1].Name]
	if from.Name == "" || to.Name == "" {
		t.Fatalf("replicas not spread over both nodes: %v", byNode)
	}

	t.Run("pod reaches pod on the other node", func(t *testing.T) {
		var out bytes.Buffer
		err := l.Exec(ctx, c1.Name, "default", from.Name, curl(to.Status.PodIP), lab.Stdio{Stdout: &out, Stderr: &out})
		if err != nil {
			t.Fatalf("curl from %s to %s: %v\n%s", from.Name, to.Name, err, out.String())
		}
		var resp echo.Response
		if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
			t.Fatalf("answer %q: %v", out.String(), err)
		}
		if resp.Pod != to.Name || resp.Node != to.Spec.NodeName || resp.Cluster != c1.Name || resp.PodIP != to.Status.PodIP {
			t.Errorf("answered by %+v, want pod %s on %s in %s", resp.Identity, to.Name, to.Spec.NodeName, c1.Name)
		}
		if host, _, _ := strings.Cut(resp.Client, ":"); host != from.Status.PodIP {
			t.Errorf("server saw client %s, want pod IP %s (no NAT inside a cluster)", resp.Client, from.Status.PodIP)
		}
	})

	t.Run("pod cannot reach a pod of the other cluster", func(t *testing.T) {
		var out bytes.Buffer
		err := l.Exec(ctx, c1.Name, "default", from.Name, curl(pods2[0].Status.PodIP), lab.Stdio{Stdout: &out, Stderr: &out})
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("curl to cluster 2's pod %s: %v (want a failed curl)\n%s", pods2[0].Status.PodIP, err, out.String())
		}
		// The node of cluster 2 answers by node IP, though: the underlay
		// is shared.
		node2 := topo.Clusters[1].Nodes[0]
		if err := nsexec.Do(nsexec.Path(c1.Nodes[0].Netns), func() error { return dialTCP(node2.IP, 6443, 2*time.Second) }); err != nil && !strings.Contains(err.Error(), "refused") {
			t.Errorf("node of cluster 1 cannot reach node IP %s of cluster 2: %v", node2.IP, err)
		}
	})

	t.Run("the workload runs in the pod's namespace and the node's cgroup", func(t *testing.T) {
		hier, err := cgroup.Find()
		if err != nil {
			t.Fatal(err)
		}
		node, _ := topo.Node(to.Spec.NodeName)
		podNS, err := os.Stat(nsexec.Path(node.PodNetns(string(to.UID))))
		if err != nil {
			t.Fatal(err)
		}
		pids, err := hier.Procs(node.Cgroup)
		if err != nil {
			t.Fatal(err)
		}
		var inPod []int
		for _, pid := range pids {
			if ns, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && os.SameFile(ns, podNS) {
				inPod = append(inPod, pid)
			}
		}
		if len(inPod) != 1 {
			t.Errorf("processes of cgroup %s in pod %s's namespace: %v, want the one workload", node.Cgroup, to.Name, inPod)
		}
	})

	t.Run("exec runs in the node cgroup and passes the exit code", func(t *testing.T) {
		var out bytes.Buffer
		if err := l.Exec(ctx, c1.Name, "default", from.Name, []string{"cat", "/proc/self/cgroup"}, lab.Stdio{Stdout: &out}); err != nil {
			t.Fatal(err)
		}
		node, _ := topo.Node(from.Spec.NodeName)
		if !strings.Contains(out.String(), "0::/"+node.Cgroup+"\n") {
			t.Errorf("exec'd process is in %q, want cgroup %s", out.String(), node.Cgroup)
		}
		// Through the CLI: stdin in, stdout out, exit code back.
		cmd := exec.CommandContext(ctx, bins.Isthmus, "lab", "exec", "--state-root", filepath.Dir(string(l.Dir)),
			c1.Name, "default/"+from.Name, "--", "sh", "-c", "cat; exit 3")
		cmd.Stdin = strings.NewReader("hello from stdin\n")
		b, err := cmd.Output()
		if !errors.As(err, new(*exec.ExitError)) || cmd.ProcessState.ExitCode() != 3 || string(b) != "hello from stdin\n" {
			t.Errorf("isthmus lab exec: output %q, err %v, exit %d; want the input echoed and exit 3", b, err, cmd.ProcessState.ExitCode())
		}
	})

	t.Run("scaling down deletes pods gracefully", func(t *testing.T) {
		scale(ctx, t, k1, "echo", 1)
		left := waitRunning(ctx, t, k1, "echo", 1)
		for _, p := range pods1 {
			if p.Name == left[0].Name {
				continue
			}
			node, _ := topo.Node(p.Spec.NodeName)
			if _, err := os.Stat(nsexec.Path(node.PodNetns(string(p.UID)))); err == nil {
				t.Errorf("network namespace of deleted pod %s is still there", p.Name)
			}
		}
	})

	t.Run("a restarted kubelet brings its pods back", func(t *testing.T) {
		pod := waitRunning(ctx, t, k1, "echo", 1)[0]
		if err := l.Restart(ctx, "kubelet/"+pod.Spec.NodeName); err != nil {
			t.Fatal(err)
		}
		// The old workload died with the old kubelet; the new one rebuilds
		// the pod with its address and serves again.
		other := c1.Nodes[0]
		if other.Name == pod.Spec.NodeName {
			other = c1.Nodes[1]
		}
		var err error
		eventually(ctx, t, "the pod to answer after the kubelet restart", func() bool {
			err = nsexec.Do(nsexec.Path(other.Netns), func() error {
				return dialTCP(netip.MustParseAddr(pod.Status.PodIP), 8080, time.Second)
			})
			return err == nil
		}, func() string { return fmt.Sprint(err) })
		again := waitRunning(ctx, t, k1, "echo", 1)[0]
		if again.UID != pod.UID || again.Status.PodIP != pod.Status.PodIP {
			t.Errorf("after the restart: pod %s IP %s, was %s IP %s", again.UID, again.Status.PodIP, pod.UID, pod.Status.PodIP)
		}
	})

	t.Run("status", func(t *testing.T) {
		st, err := l.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Ready || len(st.Processes) != 4 {
			t.Errorf("status: ready=%v, processes %+v", st.Ready, st.Processes)
		}
		restarts := 0
		for _, p := range st.Processes {
			if p.State != "running" || p.PID == 0 {
				t.Errorf("process %+v", p)
			}
			restarts += p.Restarts
		}
		if restarts != 1 {
			t.Errorf("status counts %d restarts, want the 1 of the restart test", restarts)
		}
		if len(st.Clusters) != 2 || st.Clusters[0].KubeAPIServer != "ready" || st.Clusters[1].KubeAPIServer != "ready" {
			t.Errorf("control planes: %+v", st.Clusters)
		}
	})

	t.Run("down leaves nothing behind", func(t *testing.T) {
		hier, err := cgroup.Find()
		if err != nil {
			t.Fatal(err)
		}
		pids, _ := hier.Procs(topology.CgroupDir(l.Name()))
		if err := l.Down(ctx); err != nil {
			t.Fatal(err)
		}
		checkGone(t, l, hier, pids)
		if err := l.Down(ctx); err != nil {
			t.Errorf("second down: %v", err)
		}
	})
}

// checkGone checks that nothing of lab l exists: processes, namespaces,
// links, cgroups, bpffs pins, state.
func checkGone(t *testing.T, l *lab.Lab, hier cgroup.Hierarchy, pids []int) {
	t.Helper()
	if len(pids) < 6 { // supervisor, control planes, kubelets, workloads
		t.Errorf("the lab had only %d processes before down: %v", len(pids), pids)
	}
	for _, pid := range pids {
		// A zombie is dead: a process that outlived its parent (the
		// agents' WireGuard helpers do) is reaped by the machine's init,
		// whenever that gets to it.
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !isZombie(string(b)) {
			t.Errorf("process %d of the lab still runs: %s", pid, b)
		}
	}
	if ns, _ := nsexec.List(topology.NetnsPrefix(l.Name())); len(ns) != 0 {
		t.Errorf("network namespaces left: %v", ns)
	}
	if left := underlay.WireGuardLeftovers(l.Topology); len(left) != 0 {
		t.Errorf("WireGuard sockets left: %v", left)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, link := range links {
		if link.Attrs().Name == l.Topology.HostLink || strings.Contains(link.Attrs().Alias, "isthmus lab "+l.Name()) {
			t.Errorf("link %s left", link.Attrs().Name)
		}
	}
	for _, p := range []string{
		hier.Path(topology.CgroupDir(l.Name())),
		filepath.Join(lab.BPFRoot, topology.BPFDir(l.Name())),
		string(l.Dir),
	} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left", p)
		}
	}
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil && l.Topology.Underlay.Contains(netip.MustParseAddr(r.Dst.IP.String())) {
			t.Errorf("route to %s left", r.Dst)
		}
	}
}

// isZombie reports whether a /proc/<pid>/stat line is a zombie's: its
// state, the field after the parenthesised command, is Z.
func isZombie(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	return i >= 0 && strings.HasPrefix(stat[i+1:], " Z")
}

func client(t *testing.T, l *lab.Lab, kubeContext string) kubernetes.Interface {
	t.Helper()
	c, err := l.Client(kubeContext)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func deploy(ctx context.Context, t *testing.T, k kubernetes.Interface, name string, replicas int32) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name: "echo", Image: "isthmus.dev/echo",
						Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
					}},
					// Both nodes get a replica; the scheduler decides.
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					TerminationGracePeriodSeconds: ptr.To[int64](5),
				},
			},
		},
	}
	if _, err := k.AppsV1().Deployments("default").Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func scale(ctx context.Context, t *testing.T, k kubernetes.Interface, name string, replicas int32) {
	t.Helper()
	s, err := k.AppsV1().Deployments("default").GetScale(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Spec.Replicas = replicas
	if _, err := k.AppsV1().Deployments("default").UpdateScale(ctx, name, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitRunning waits until exactly n pods of app name exist, all Running and
// Ready with an IP.
func waitRunning(ctx context.Context, t *testing.T, k kubernetes.Interface, name string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(ctx, t, fmt.Sprintf("%d running pods of %s", n, name), func() bool {
		list, err := k.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false
		}
		pods = list.Items
		if len(pods) != n {
			return false
		}
		for _, p := range pods {
			if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || !podReady(p) || p.DeletionTimestamp != nil {
				return false
			}
		}
		return true
	}, func() string {
		var s []string
		for _, p := range pods {
			s = append(s, fmt.Sprintf("%s on %q: %s %q ready=%v deleting=%v %s", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.PodIP, podReady(p), p.DeletionTimestamp != nil, p.Status.Message))
		}
		return strings.Join(s, "; ")
	})
	return pods
}

// eventually polls cond until it holds or ctx ends, then fails with
// describe's account of the last state.
func eventually(ctx context.Context, t *testing.T, what string, cond func() bool, describe func() string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; last: %s", what, ctx.Err(), describe())
		case <-tick.C:
		}
	}
}

func curl(ip string) []string {
	return []string{"curl", "-sS", "--max-time", "5", "http://" + ip + ":8080/"}
}

func ready(conds []corev1.NodeCondition) bool {
	for _, c := range conds {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func internalIP(n corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}

func readyAddresses(items []discoveryv1.EndpointSlice) []string {
	var ips []string
	for _, s := range items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				ips = append(ips, e.Addresses...)
			}
		}
	}
	slices.Sort(ips)
	return ips
}
