package kubelet

import (
	"log/slog"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/lab/podnet"
)

func testConfig() Config {
	return Config{
		Client:         fake.NewClientset(),
		NodeName:       "lab-c1-n1",
		ClusterName:    "lab-c1",
		NodeIP:         netip.MustParseAddr("10.250.0.100"),
		PodCIDR:        netip.MustParsePrefix("10.1.1.0/24"),
		PodNetnsPrefix: "isl.lab.lab-c1-n1.",
		Network:        podnet.Network{Node: &netlink.Handle{}},
		Workload:       func(WorkloadSpec) *exec.Cmd { return nil },
	}
}

func testKubelet(t *testing.T) *Kubelet {
	t.Helper()
	k, err := New(slog.New(slog.DiscardHandler), testConfig())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewRejectsIncompleteConfig(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"no client":   func(c *Config) { c.Client = nil },
		"no node":     func(c *Config) { c.NodeName = "" },
		"no IP":       func(c *Config) { c.NodeIP = netip.Addr{} },
		"no workload": func(c *Config) { c.Workload = nil },
		"IPv6 CIDR":   func(c *Config) { c.PodCIDR = netip.MustParsePrefix("fd00::/64") },
	} {
		cfg := testConfig()
		mutate(&cfg)
		if _, err := New(slog.New(slog.DiscardHandler), cfg); err == nil {
			t.Errorf("%s: New accepted the config", name)
		}
	}
}

func TestPodStatusRunningAndStable(t *testing.T) {
	k := testKubelet(t)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default", UID: "u1"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "echo", Image: "echo:1"}, {Name: "side", Image: "side:1"}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
		}},
	}
	w := &workload{exited: make(chan struct{})}
	rt := &podRuntime{uid: "u1", ip: netip.MustParseAddr("10.1.1.2"), workload: w, started: metav1.Now()}

	s := k.podStatus(pod, rt)
	if s.Phase != corev1.PodRunning || s.PodIP != "10.1.1.2" || len(s.PodIPs) != 1 || s.HostIP != "10.250.0.100" || s.StartTime == nil {
		t.Errorf("status = %+v", s)
	}
	want := map[corev1.PodConditionType]corev1.ConditionStatus{
		corev1.PodScheduled: corev1.ConditionTrue, corev1.PodReady: corev1.ConditionTrue,
		corev1.ContainersReady: corev1.ConditionTrue, corev1.PodInitialized: corev1.ConditionTrue,
		corev1.PodReadyToStartContainers: corev1.ConditionTrue,
	}
	for _, c := range s.Conditions {
		if want[c.Type] != c.Status {
			t.Errorf("condition %s = %s, want %s", c.Type, c.Status, want[c.Type])
		}
		delete(want, c.Type)
	}
	if len(want) != 0 {
		t.Errorf("missing conditions %v", want)
	}
	if len(s.ContainerStatuses) != 2 || !s.ContainerStatuses[1].Ready || s.ContainerStatuses[1].State.Running == nil {
		t.Errorf("container statuses = %+v", s.ContainerStatuses)
	}

	// Once written, the same runtime yields the same status: no update loop.
	pod.Status = s
	if again := k.podStatus(pod, rt); !apiequality.Semantic.DeepEqual(again, s) {
		t.Errorf("status changed without cause:\n%+v\n%+v", again, s)
	}

	// An exited workload makes the pod not ready.
	close(w.exited)
	s = k.podStatus(pod, rt)
	for _, c := range s.Conditions {
		if (c.Type == corev1.PodReady || c.Type == corev1.ContainersReady) && c.Status != corev1.ConditionFalse {
			t.Errorf("condition %s = %s after exit", c.Type, c.Status)
		}
	}
	if s.ContainerStatuses[0].State.Waiting == nil || s.ContainerStatuses[0].Ready {
		t.Errorf("container after exit = %+v", s.ContainerStatuses[0])
	}
}

func TestWorkloadSpecPorts(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "a", Ports: []corev1.ContainerPort{{ContainerPort: 8080}, {ContainerPort: 53, Protocol: corev1.ProtocolUDP}}},
			{Name: "b", Ports: []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {ContainerPort: 9, Protocol: corev1.ProtocolSCTP}}},
		}},
	}
	spec := workloadSpec(pod, "n1", "c1", netip.MustParseAddr("10.1.1.5"))
	want := []echo.Port{{Protocol: "TCP", Number: 8080}, {Protocol: "UDP", Number: 53}}
	if len(spec.Ports) != len(want) || spec.Ports[0] != want[0] || spec.Ports[1] != want[1] {
		t.Errorf("ports = %v, want %v", spec.Ports, want)
	}
	if spec.Identity != (echo.Identity{Cluster: "c1", Node: "n1", Namespace: "ns", Pod: "p", PodIP: "10.1.1.5"}) {
		t.Errorf("identity = %+v", spec.Identity)
	}
}
