package kubelet_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/lab/kubelet"
	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/lab/podnet"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) { testenv.Main(m, kube) }

// node runs a kubelet for a fresh node namespace against the test's
// kube-apiserver. Workloads are shell commands chosen by the pod's image:
// "serve" reports ready and sleeps, "crash" exits before it is ready,
// "die-later" reports ready and exits a moment later, once.
type node struct {
	name   string
	prefix string
	client kubernetes.Interface
	ns     string
}

func startNode(t *testing.T) *node {
	t.Helper()
	privileged.Require(t)
	k := kube.Kube(t)
	suffix := strings.ToLower(rand.Text()[:8])
	n := &node{name: "kl-" + suffix, prefix: "isthmus-test-" + suffix + ".", client: k.Client, ns: k.Namespace}
	netnsName := "isthmus-test-" + suffix
	if err := nsexec.Create(netnsName); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsexec.Delete(netnsName) })
	h, err := netns.GetFromName(netnsName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	handle, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(handle.Close)
	died := t.TempDir() // "die-later" workloads die once per pod
	kl, err := kubelet.New(slog.New(slog.NewTextHandler(testWriter{t}, nil)), kubelet.Config{
		Client:         k.Client,
		NodeName:       n.name,
		ClusterName:    "test",
		NodeIP:         netip.MustParseAddr("192.0.2.10"),
		PodCIDR:        netip.MustParsePrefix("10.77.1.0/24"),
		PodNetnsPrefix: n.prefix,
		Network:        podnet.Network{Node: handle},
		LeaseDuration:  4 * time.Second,
		ReadyTimeout:   10 * time.Second,
		Workload: func(spec kubelet.WorkloadSpec) *exec.Cmd {
			script := map[string]string{
				"crash":     "echo cannot start >&2; exit 1",
				"die-later": "echo x >&3; exec 3>&-; f=" + died + "/" + spec.Identity.Pod + "; if [ ! -e $f ]; then touch $f; sleep 0.5; exit 1; fi; exec sleep 600",
			}[imageOf(k.Client, n.ns, spec.Identity.Pod)]
			if script == "" {
				script = "echo x >&3; exec 3>&-; exec sleep 600"
			}
			return exec.Command("sh", "-c", script)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := kl.Run(ctx); err != nil {
			t.Errorf("kubelet: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if left, _ := nsexec.List(n.prefix); len(left) != 0 {
			t.Errorf("pod namespaces left after the kubelet stopped: %v", left)
		}
		_ = k.Client.CoreV1().Nodes().Delete(context.Background(), n.name, metav1.DeleteOptions{})
	})
	return n
}

func imageOf(c kubernetes.Interface, ns, pod string) string {
	p, err := c.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil || len(p.Spec.Containers) == 0 {
		return ""
	}
	return p.Spec.Containers[0].Image
}

func (n *node) createPod(t *testing.T, name, image string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: n.ns},
		Spec: corev1.PodSpec{
			NodeName:                      n.name,
			Containers:                    []corev1.Container{{Name: "c", Image: image}},
			TerminationGracePeriodSeconds: ptr.To[int64](3),
		},
	}
	p, err := n.client.CoreV1().Pods(n.ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitPod waits until cond holds for the pod (nil once it is gone).
func (n *node) waitPod(t *testing.T, name, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	waitFor(t, "pod "+name+" "+what, func() (bool, string) {
		p, err := n.client.CoreV1().Pods(n.ns).Get(context.Background(), name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			last = nil
		case err != nil:
			return false, err.Error()
		default:
			last = p
		}
		return cond(last), fmt.Sprintf("%+v", statusOf(last))
	})
	return last
}

// waitFor polls cond until it holds, failing after a minute with cond's
// account of the last state.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	timeout := time.After(time.Minute)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, last := cond()
		if ok {
			return
		}
		select {
		case <-timeout:
			t.Fatalf("waiting for %s; last: %s", what, last)
		case <-tick.C:
		}
	}
}

func statusOf(p *corev1.Pod) any {
	if p == nil {
		return nil
	}
	return p.Status
}

func running(p *corev1.Pod) bool {
	if p == nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func TestNodeRegistersWithLease(t *testing.T) {
	n := startNode(t)
	ctx := context.Background()
	var node *corev1.Node
	waitFor(t, "the node to register Ready", func() (bool, string) {
		var err error
		node, err = n.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true, ""
			}
		}
		return false, fmt.Sprint(node.Status.Conditions)
	})
	if node.Spec.PodCIDR != "10.77.1.0/24" || node.Status.Addresses[0].Address != "192.0.2.10" {
		t.Errorf("node = %+v %+v", node.Spec, node.Status.Addresses)
	}
	var first time.Time
	waitFor(t, "the node lease to be renewed", func() (bool, string) {
		lease, err := n.client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if first.IsZero() {
			first = lease.Spec.RenewTime.Time
		}
		return lease.Spec.RenewTime.After(first), "renewed at " + lease.Spec.RenewTime.String()
	})
}

func TestPodLifecycle(t *testing.T) {
	n := startNode(t)
	ctx := context.Background()
	n.createPod(t, "web", "serve")
	p := n.waitPod(t, "web", "ran", running)
	ip := netip.MustParseAddr(p.Status.PodIP)
	if !netip.MustParsePrefix("10.77.1.0/24").Contains(ip) || p.Status.HostIP != "192.0.2.10" {
		t.Errorf("pod IP %s host %s", ip, p.Status.HostIP)
	}
	sandbox := n.prefix + string(p.UID)
	if _, err := os.Stat(nsexec.Path(sandbox)); err != nil {
		t.Fatalf("pod namespace: %v", err)
	}

	// Graceful deletion: the kubelet stops the workload, removes the
	// network and then the pod object.
	if err := n.client.CoreV1().Pods(n.ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.waitPod(t, "web", "went away", func(p *corev1.Pod) bool { return p == nil })
	if _, err := os.Stat(nsexec.Path(sandbox)); err == nil {
		t.Error("the deleted pod's namespace is still there")
	}

	// Force deletion: the object is gone at once; the kubelet still
	// cleans up.
	n.createPod(t, "web2", "serve")
	p = n.waitPod(t, "web2", "ran", running)
	if err := n.client.CoreV1().Pods(n.ns).Delete(ctx, "web2", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	eventuallyGone(t, nsexec.Path(n.prefix+string(p.UID)))
}

func TestWorkloadThatCannotStartIsReported(t *testing.T) {
	n := startNode(t)
	n.createPod(t, "broken", "crash")
	p := n.waitPod(t, "broken", "reported its failure", func(p *corev1.Pod) bool {
		return p != nil && p.Status.Reason == "LabStartError"
	})
	if p.Status.Phase != corev1.PodPending || !strings.Contains(p.Status.Message, "exited before serving") {
		t.Errorf("status = %s %q", p.Status.Phase, p.Status.Message)
	}
	if left, _ := nsexec.List(n.prefix); len(left) != 0 {
		t.Errorf("a failed start left namespaces: %v", left)
	}
}

func TestWorkloadThatDiesIsRestarted(t *testing.T) {
	n := startNode(t)
	n.createPod(t, "flaky", "die-later")
	p := n.waitPod(t, "flaky", "restarted and ran", func(p *corev1.Pod) bool {
		return running(p) && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount == 1
	})
	if p.Status.PodIP == "" {
		t.Error("no pod IP after the restart")
	}
}

func eventuallyGone(t *testing.T, path string) {
	t.Helper()
	waitFor(t, path+" to go", func() (bool, string) {
		_, err := os.Stat(path)
		return err != nil, "still there"
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
