package labe2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

const (
	namespace  = "default"
	serverPort = 8080
)

func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			pkg := map[string]string{"wg": "wireguard-tools", "curl": "curl", "ip": "iproute2"}[tool]
			privileged.Unavailable(t, fmt.Sprintf("%s is not installed (apt-get install %s)", tool, pkg))
		}
	}
}

func kubeClient(t testing.TB, l *lab.Lab, kubeContext string) kubernetes.Interface {
	t.Helper()
	c, err := l.Client(kubeContext)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// deploy runs one echo pod labelled app=name.
func deploy(ctx context.Context, t testing.TB, k kubernetes.Interface, name string) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name: "echo", Image: "isthmus.dev/echo",
						Ports: []corev1.ContainerPort{{ContainerPort: serverPort}},
					}},
					TerminationGracePeriodSeconds: ptr.To[int64](5),
				},
			},
		},
	}
	if _, err := k.AppsV1().Deployments(namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// globalService creates the global Service name (port 80 to the pods'
// 8080) and returns its ClusterIP.
func globalService(ctx context.Context, t testing.TB, k kubernetes.Interface, name string) string {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: map[string]string{meshconfig.ServiceGlobalAnnotation: "true"}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(serverPort)}},
		},
	}
	out, err := k.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out.Spec.ClusterIP
}

// runningPod waits for the one running, ready pod of app name.
func runningPod(ctx context.Context, t testing.TB, k kubernetes.Interface, name string) corev1.Pod {
	t.Helper()
	var last string
	var pod corev1.Pod
	waitUntil(ctx, t, "a running pod of "+name, func() bool {
		list, err := k.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil || len(list.Items) != 1 {
			last = fmt.Sprintf("%d pods, %v", len(list.Items), err)
			return false
		}
		pod = list.Items[0]
		last = fmt.Sprintf("%s %s %q", pod.Name, pod.Status.Phase, pod.Status.PodIP)
		return pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "" && pod.DeletionTimestamp == nil
	}, func() string { return last })
	return pod
}

// waitUntil polls cond until it holds, failing t with describe's account
// when ctx ends first.
func waitUntil(ctx context.Context, t testing.TB, what string, cond func() bool, describe func() string) {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; last: %s", what, ctx.Err(), describe())
		case <-tick.C:
		}
	}
}

// get makes an HTTP request from inside pod with curl and returns who
// answered.
func get(ctx context.Context, l *lab.Lab, kubeContext, pod, url string, timeout time.Duration) (echo.Response, error) {
	var out, errOut bytes.Buffer
	argv := []string{"curl", "-sS", "--max-time", fmt.Sprintf("%.1f", timeout.Seconds()), url}
	if err := l.Exec(ctx, kubeContext, namespace, pod, argv, lab.Stdio{Stdout: &out, Stderr: &errOut}); err != nil {
		return echo.Response{}, fmt.Errorf("curl %s from %s: %w: %s", url, pod, err, strings.TrimSpace(errOut.String()))
	}
	var r echo.Response
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return r, fmt.Errorf("curl %s from %s: %w in %q", url, pod, err, out.String())
	}
	return r, nil
}

func podURL(p corev1.Pod) string { return fmt.Sprintf("http://%s:%d/", p.Status.PodIP, serverPort) }

// inNode runs a command in node n's network namespace.
func inNode(ctx context.Context, n topology.Node, argv ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Netns}, argv...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), n.Name, err, out)
	}
	return string(out), nil
}

// agentSocket is the local API socket of node n's agent.
func agentSocket(l *lab.Lab, n topology.Node) string {
	return filepath.Join(l.Dir.NodeDir(n.Name), "agent", "agent.sock")
}

// agentAPI dials the local API of node n's agent.
func agentAPI(t testing.TB, l *lab.Lab, n topology.Node) agentv1.AgentClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+agentSocket(l, n), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewAgentClient(conn)
}

// metrics fetches node n's agent's metrics.
func metrics(ctx context.Context, n topology.Node) (string, error) {
	url := "http://" + netip.AddrPortFrom(n.IP, 9966).String() + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// metricValue finds the value of the sample line that starts with series
// (name{labels}); ok is false when there is none.
func metricValue(text, series string) (v float64, ok bool) {
	for _, line := range strings.Split(text, "\n") {
		if rest, found := strings.CutPrefix(line, series+" "); found {
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v, true
			}
		}
	}
	return 0, false
}
