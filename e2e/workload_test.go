package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/e2e/testbed"
	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

const (
	echoName = "echo"
	echoPort = 8080
	svcPort  = 80
)

// deployEcho runs replicas of the echo workload in c, spread over its
// nodes. On the lab every container is the echo server; on real clusters
// the echo image runs `isthmus lab workload`, told its identity through
// the downward API.
func (s *scenario) deployEcho(c *testbed.Cluster, replicas int32) {
	s.t.Helper()
	labels := map[string]string{"app": echoName}
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: echoName, Namespace: s.ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name:    "echo",
						Image:   s.env.Conventions.EchoImage,
						Command: []string{"isthmus"},
						Args: []string{"lab", "workload", "--cluster", c.Name, "--node", "$(NODE_NAME)", "--namespace", "$(POD_NAMESPACE)",
							"--pod", "$(POD_NAME)", "--pod-ip", "$(POD_IP)", "--port", fmt.Sprint(echoPort)},
						Env: []corev1.EnvVar{
							fieldEnv("NODE_NAME", "spec.nodeName"), fieldEnv("POD_NAMESPACE", "metadata.namespace"),
							fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_IP", "status.podIP"),
						},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: echoPort}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
							HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(echoPort)},
						}, PeriodSeconds: 2},
					}},
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.ScheduleAnyway,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					TerminationGracePeriodSeconds: ptr.To[int64](5),
				},
			},
		},
	}
	_, err := c.Kube.AppsV1().Deployments(s.ns).Create(s.ctx, d, metav1.CreateOptions{})
	s.must(err, "create the echo Deployment in "+c.Name)
}

// scaleEcho sets the echo Deployment's replicas in c.
func (s *scenario) scaleEcho(c *testbed.Cluster, replicas int32) {
	s.t.Helper()
	sc, err := c.Kube.AppsV1().Deployments(s.ns).GetScale(s.ctx, echoName, metav1.GetOptions{})
	s.must(err, "read the scale of echo in "+c.Name)
	sc.Spec.Replicas = replicas
	_, err = c.Kube.AppsV1().Deployments(s.ns).UpdateScale(s.ctx, echoName, sc, metav1.UpdateOptions{})
	s.must(err, "scale echo in "+c.Name)
}

// waitPods waits until exactly n pods with label app=app run and are
// ready in c, and returns them.
func (s *scenario) waitPods(c *testbed.Cluster, app string, n int) []corev1.Pod {
	s.t.Helper()
	var pods []corev1.Pod
	s.eventually(fmt.Sprintf("%d ready %s pods in %s", n, app, c), 3*time.Minute, func() (bool, string) {
		list, err := c.Kube.CoreV1().Pods(s.ns).List(s.ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, err.Error()
		}
		pods = list.Items
		var desc []string
		ok := len(pods) == n
		for _, p := range pods {
			r := podReady(&p)
			ok = ok && r
			desc = append(desc, fmt.Sprintf("%s on %q: %s %s ready=%t deleting=%t", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.PodIP, r, p.DeletionTimestamp != nil))
		}
		return ok, strings.Join(desc, "\n")
	})
	return pods
}

func podReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil || p.Status.PodIP == "" {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// serviceOptions are a global service's annotations.
type serviceOptions struct {
	affinity string // "" leaves the annotation out (affinity none)
	unshared bool
}

func (o serviceOptions) annotations() map[string]string {
	a := map[string]string{meshconfig.ServiceGlobalAnnotation: "true"}
	if o.affinity != "" {
		a[meshconfig.ServiceAffinityAnnotation] = o.affinity
	}
	if o.unshared {
		a[meshconfig.ServiceSharedAnnotation] = "false"
	}
	return a
}

// globalService creates the echo Service in c, global, and returns its
// frontend as the agents' dumps name it (ClusterIP:port/TCP).
func (s *scenario) globalService(c *testbed.Cluster, opts serviceOptions) (vip, frontend string) {
	s.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: echoName, Namespace: s.ns, Annotations: opts.annotations()},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": echoName},
			Ports:    []corev1.ServicePort{{Name: "http", Port: svcPort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}},
		},
	}
	created, err := c.Kube.CoreV1().Services(s.ns).Create(s.ctx, svc, metav1.CreateOptions{})
	s.must(err, "create the echo Service in "+c.Name)
	vip = created.Spec.ClusterIP
	return vip, fmt.Sprintf("%s:%d/TCP", vip, svcPort)
}

// annotateService replaces the mesh annotations of the echo Service in c.
func (s *scenario) annotateService(c *testbed.Cluster, opts serviceOptions) {
	s.t.Helper()
	svc, err := c.Kube.CoreV1().Services(s.ns).Get(s.ctx, echoName, metav1.GetOptions{})
	s.must(err, "read the echo Service of "+c.Name)
	svc.Annotations = opts.annotations()
	_, err = c.Kube.CoreV1().Services(s.ns).Update(s.ctx, svc, metav1.UpdateOptions{})
	s.must(err, "annotate the echo Service of "+c.Name)
}

// clientPod starts a pod in c that requests are sent from, and returns its
// name once it runs. On real clusters it is the client image sleeping; on
// the lab the commands run are this machine's.
func (s *scenario) clientPod(c *testbed.Cluster) string {
	s.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: s.ns, Labels: map[string]string{"app": "client"}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "client", Image: s.env.Conventions.ClientImage,
				Command: []string{"sleep", "86400"},
			}},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
		},
	}
	_, err := c.Kube.CoreV1().Pods(s.ns).Create(s.ctx, pod, metav1.CreateOptions{})
	s.must(err, "create the client pod in "+c.Name)
	return s.waitPods(c, "client", 1)[0].Name
}

// clientNode is the node the client pod of c runs on.
func (s *scenario) clientNode(c *testbed.Cluster, pod string) string {
	s.t.Helper()
	p, err := c.Kube.CoreV1().Pods(s.ns).Get(s.ctx, pod, metav1.GetOptions{})
	s.must(err, "read the client pod")
	return p.Spec.NodeName
}

// request sends one HTTP request from pod of c to addr and returns who
// answered.
func (s *scenario) request(c *testbed.Cluster, pod, addr string) (echo.Response, error) {
	var out, errOut bytes.Buffer
	argv := []string{"curl", "-sS", "--max-time", "5", "--connect-timeout", "3", "http://" + addr + "/"}
	if err := c.Exec(s.ctx, s.ns, pod, argv, &out, &errOut); err != nil {
		return echo.Response{}, fmt.Errorf("curl http://%s/ from %s/%s: %w: %s", addr, c, pod, err, strings.TrimSpace(errOut.String()))
	}
	var resp echo.Response
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		return echo.Response{}, fmt.Errorf("curl http://%s/ from %s/%s: answer %q is not the echo server's: %v", addr, c, pod, out.String(), err)
	}
	return resp, nil
}

// tally counts the answers of a batch of requests by cluster, and keeps
// the errors.
type tally struct {
	byCluster map[string]int
	errors    []string
}

func (t tally) String() string {
	var parts []string
	for _, c := range slices.Sorted(maps.Keys(t.byCluster)) {
		parts = append(parts, fmt.Sprintf("%s answered %d", c, t.byCluster[c]))
	}
	if len(t.errors) > 0 {
		parts = append(parts, fmt.Sprintf("%d failed, e.g. %s", len(t.errors), t.errors[0]))
	}
	return strings.Join(parts, ", ")
}

// only reports whether every request succeeded and was answered by
// exactly the clusters named.
func (t tally) only(clusters ...string) bool {
	if len(t.errors) > 0 {
		return false
	}
	got := slices.Sorted(maps.Keys(t.byCluster))
	want := slices.Clone(clusters)
	slices.Sort(want)
	return slices.Equal(got, want)
}

// batch sends n requests from pod of c to addr, one after the other.
func (s *scenario) batch(c *testbed.Cluster, pod, addr string, n int) tally {
	t := tally{byCluster: map[string]int{}}
	for range n {
		resp, err := s.request(c, pod, addr)
		if err != nil {
			t.errors = append(t.errors, err.Error())
			continue
		}
		t.byCluster[resp.Cluster]++
	}
	return t
}

// Batch sizes: answersBatch while waiting for the answers to change, and
// steadyBatch for the check that they then stay as they are. With two
// clusters of equally many backends chosen at random, a batch of 30
// misses one cluster with probability 2^-29.
const (
	answersBatch = 10
	steadyBatch  = 30
)

// waitAnswers waits until a batch of requests from pod of c to addr all
// succeed and are answered by exactly the clusters named, then checks a
// larger batch is too.
func (s *scenario) waitAnswers(c *testbed.Cluster, pod, addr string, clusters ...string) {
	s.t.Helper()
	s.eventually(fmt.Sprintf("requests from %s to %s answered by %v only", c, addr, clusters), meshTimeout, func() (bool, string) {
		t := s.batch(c, pod, addr, answersBatch)
		return t.only(clusters...), t.String()
	})
	if t := s.batch(c, pod, addr, steadyBatch); !t.only(clusters...) {
		s.t.Fatalf("%d requests from %s to %s: %s; want every one answered, by %v only", steadyBatch, c, addr, t, clusters)
	}
}
