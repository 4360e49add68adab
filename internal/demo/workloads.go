package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

var globalAnnotation = meshconfig.ServiceGlobalAnnotation + `: "true"`

func echoService() *corev1.Service {
	return &corev1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: Namespace, Annotations: map[string]string{
			meshconfig.ServiceGlobalAnnotation: "true",
		}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
}

// serviceYAML is the Service as a user would write it.
func serviceYAML() string { return manifestYAML(echoService()) }

// manifestYAML is obj as a user would write it: without the empty fields
// a typed object carries.
func manifestYAML(obj any) string {
	b, err := yaml.Marshal(obj)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(l)
		if strings.Contains(l, "creationTimestamp") || t == "status:" || t == "status: {}" || t == "loadBalancer: {}" {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func echoDeployment() *appsv1.Deployment {
	labels := map[string]string{"app": "echo"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: Namespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					// The lab runs its echo server in every container; the
					// image only names it.
					Containers: []corev1.Container{{Name: "echo", Image: "isthmus.dev/echo", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.ScheduleAnyway,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					TerminationGracePeriodSeconds: ptr.To[int64](5),
				},
			},
		},
	}
}

// apply creates or updates the demo's namespace, echo Deployment and
// global Service in one cluster.
func apply(ctx context.Context, k kubernetes.Interface, cluster string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}
	if _, err := k.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s in %s: %w", Namespace, cluster, err)
	}
	d := echoDeployment()
	if old, err := k.AppsV1().Deployments(Namespace).Get(ctx, d.Name, metav1.GetOptions{}); err == nil {
		old.Spec = d.Spec
		_, err = k.AppsV1().Deployments(Namespace).Update(ctx, old, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update Deployment %s/echo in %s: %w", Namespace, cluster, err)
		}
	} else if _, err := k.AppsV1().Deployments(Namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Deployment %s/echo in %s: %w", Namespace, cluster, err)
	}
	s := echoService()
	if old, err := k.CoreV1().Services(Namespace).Get(ctx, s.Name, metav1.GetOptions{}); err == nil {
		old.Annotations, old.Spec.Selector, old.Spec.Ports = s.Annotations, s.Spec.Selector, s.Spec.Ports
		if _, err := k.CoreV1().Services(Namespace).Update(ctx, old, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update Service %s/echo in %s: %w", Namespace, cluster, err)
		}
	} else if _, err := k.CoreV1().Services(Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service %s/echo in %s: %w", Namespace, cluster, err)
	}
	return nil
}

// applyClient creates the pod requests are sent from, unless it exists.
func applyClient(ctx context.Context, k kubernetes.Interface) error {
	return applyPod(ctx, k, "client")
}

// applyPod creates pod name labelled app=name, unless it exists. The lab
// runs its echo server in it; the demo only sends requests from it.
func applyPod(ctx context.Context, k kubernetes.Interface, name string) error {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{{Name: name, Image: "isthmus.dev/" + name}},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
		},
	}
	if _, err := k.CoreV1().Pods(Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create pod %s/%s: %w", Namespace, name, err)
	}
	return nil
}

// waitReady waits until exactly n pods of selector run and are ready.
func waitReady(ctx context.Context, k kubernetes.Interface, selector string, n int) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := k.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		var states []string
		ready := 0
		for _, p := range list.Items {
			ok := p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && p.Status.PodIP != ""
			if ok {
				ready++
			}
			states = append(states, fmt.Sprintf("%s %s", p.Name, p.Status.Phase))
		}
		last = strings.Join(states, ", ")
		return ready == n && len(list.Items) == n, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %d running pods %s in %s: %w (now: %s)", n, selector, Namespace, err, last)
	}
	return nil
}

func serviceIP(ctx context.Context, k kubernetes.Interface) (string, error) {
	s, err := k.CoreV1().Services(Namespace).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read Service %s/echo: %w", Namespace, err)
	}
	return s.Spec.ClusterIP, nil
}

// ask runs one request command and decodes the echo server's answer.
func (w *walkthrough) ask(ctx context.Context, args []string) (echo.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := w.output(ctx, "isthmus", args...)
	if err != nil {
		return echo.Response{}, err
	}
	var r echo.Response
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return echo.Response{}, fmt.Errorf("answer %q is not the echo server's: %w", out, err)
	}
	return r, nil
}
